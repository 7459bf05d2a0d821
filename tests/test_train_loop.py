"""The training loop on a tiny 2-D run: an interrupted and resumed run ends bit-identical to an
uninterrupted one (with gradient accumulation, clipping, warmup and EMA warmup), non-finite steps are
skipped and too many in a row abort, reduced precisions and the flow-matching baseline run, and the
run directory holds what the README promises."""
import contextlib
import json

import pytest
import torch

from imm_ext.train import Trainer, TrainingDiverged
from imm_ext.models import load_model
from imm_ext.train.checkpoint import load_checkpoint

from conftest import tiny_config, wrap_training_loss

def final_weights(run_dir):
    state = load_checkpoint(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1])
    return state["step"], state["model"], state["ema"]["model"], state["optimizer"]["state"]


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    config = tiny_config()
    Trainer(config, run_dir=tmp_path / "straight").run()

    def stop_at_three(trainer, step):
        if step == 3:
            trainer.request_stop("test")

    interrupted = Trainer(config, run_dir=tmp_path / "resumed", on_step=stop_at_three).run()
    assert interrupted.interrupted and interrupted.step == 3
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-00000003.pt"]
    resumed = Trainer(config, run_dir=tmp_path / "resumed", resume="auto").run()
    assert not resumed.interrupted and resumed.step == 6

    step_a, model_a, ema_a, optim_a = final_weights(tmp_path / "straight")
    step_b, model_b, ema_b, optim_b = final_weights(tmp_path / "resumed")
    assert step_a == step_b == 6
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name
        assert torch.equal(ema_a[name], ema_b[name]), name
    for index in optim_a:
        for key in optim_a[index]:
            assert torch.equal(optim_a[index][key], optim_b[index][key])
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4, 6]
    assert [entry["loss"] for entry in log] == [entry["loss"] for entry in straight_log]


def test_run_directory_contents(tmp_path):
    result = Trainer(tiny_config("log.sample_every=3"), run_dir=tmp_path).run()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.yaml", "log.jsonl", "loss.png", "metrics.json", "summary.json", "samples-1step.png",
            "samples-2step.png", "checkpoints", "samples", "model-ema.safetensors"} <= names
    assert (tmp_path / "samples" / "step-00000003.png").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics_by_steps"]
    assert set(metrics) == {"1", "2"} and "energy" in metrics["1"]
    assert result.metrics[1]["energy"] == metrics["1"]["energy"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 6 and len(summary["parameter_sha256_by_rank"]) == 1
    ema = load_model(tmp_path / "model-ema.safetensors")
    state = load_checkpoint(tmp_path / "checkpoints" / "step-00000006.pt")["ema"]["model"]
    assert all(torch.equal(value, state[name]) for name, value in ema.state_dict().items())


def test_nonfinite_steps_are_skipped_then_abort(tmp_path, monkeypatch):
    poisoned_calls = set()

    def poisoned(loss_fn, bad_calls):
        calls = iter(range(10 ** 6))

        def wrapped(model, x, labels, generator):
            loss, diagnostics = loss_fn(model, x, labels, generator)
            call = next(calls)
            if call in bad_calls or "all" in bad_calls:
                poisoned_calls.add(call)
                loss = loss * float("nan")
            return loss, diagnostics
        return wrapped

    # Micro-batch calls 2 and 3 belong to step 2 (two micro-batches per step): one skipped step.
    wrap_training_loss(monkeypatch, lambda loss_fn: poisoned(loss_fn, {2, 3}))
    before = Trainer(tiny_config(), run_dir=tmp_path / "a").run()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and before.step == 6

    wrap_training_loss(monkeypatch, lambda loss_fn: poisoned(loss_fn, {"all"}))
    # The streak is read back on logged steps: every step here, so the run stops at the third.
    with pytest.raises(TrainingDiverged, match=r"not finite for 3 steps in a row \(steps 1..3\)"):
        Trainer(tiny_config("train.max_nonfinite=3", "log.log_every=1"), run_dir=tmp_path / "b").run()
    # Logging every second step, it stops at the first logged step with a streak of 3 or more.
    with pytest.raises(TrainingDiverged, match=r"not finite for 4 steps in a row \(steps 1..4\)"):
        Trainer(tiny_config("train.max_nonfinite=3", "log.log_every=2"), run_dir=tmp_path / "c").run()


@pytest.mark.parametrize("overrides", [["train.precision=bf16"], ["train.precision=fp16"],
                                       ["method.kind=flow_matching", "method.fm_solver=heun"]])
def test_precisions_and_flow_matching_run(tmp_path, overrides):
    bf16 = "train.precision=bf16" in overrides
    with pytest.warns(UserWarning, match="bf16 cannot separate") if bf16 else contextlib.nullcontext():
        result = Trainer(tiny_config("train.steps=3", *overrides), run_dir=tmp_path).run()
    assert result.step == 3 and all(torch.isfinite(torch.tensor(list(v.values()))).all()
                                    for v in result.metrics.values())
    state = load_checkpoint(result.checkpoint)
    if "train.precision=fp16" in overrides:
        assert state["scaler"] is not None
        assert "delta: 0.0001" in state["config"]


def test_resume_refuses_a_finished_run(tmp_path):
    config = tiny_config("train.steps=2")
    Trainer(config, run_dir=tmp_path).run()
    with pytest.raises(ValueError, match="already at step 2 and the run is finished"):
        Trainer(config, run_dir=tmp_path, resume="auto").run()
    extended = Trainer(tiny_config("train.steps=3"), run_dir=tmp_path, resume="auto").run()
    assert extended.step == 3
