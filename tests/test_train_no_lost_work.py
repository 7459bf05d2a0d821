"""Training never loses work: a checkpoint is never written from weights that just gave a non-finite loss
and rotation never deletes the newest good one; a run directory has one owner and runs are never mixed;
a torn log or a corrupt checkpoint does not stop `--resume auto`; a flipped bit in a weight is refused;
a resume that would train something else is refused, naming what differs."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from imm_ext.train import Trainer, TrainingDiverged
from imm_ext.train.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, save_atomic,
                                      save_checkpoint)
from imm_ext.train.config import ConfigError
from imm_ext.train.run_directory import RunDirectoryBusy, RunDirectoryLock
from imm_ext.train.run_log import LogError, read_log

from conftest import tiny_config, wrap_training_loss


def names(run_dir):
    return [path.name for path in list_checkpoints(run_dir / "checkpoints")]


def poison_steps(monkeypatch, bad_steps, micro_batches=2):
    """Make the loss NaN on the given (1-based) steps of every following run."""
    def poisoned(loss_fn):
        calls = iter(range(10 ** 6))

        def wrapped(model, x, labels, generator):
            loss, diagnostics = loss_fn(model, x, labels, generator)
            if next(calls) // micro_batches + 1 in bad_steps:
                loss = loss * float("nan")
            return loss, diagnostics
        return wrapped

    wrap_training_loss(monkeypatch, poisoned)


# ---------------------------------------------------------------------------------------------
# Non-finite streaks

def test_no_checkpoint_is_written_during_a_nonfinite_streak(tmp_path, monkeypatch, capsys):
    poison_steps(monkeypatch, set(range(4, 100)))
    config = tiny_config("train.steps=10", "log.checkpoint_every=1", "log.keep_checkpoints=2", "train.max_nonfinite=4")
    with pytest.raises(TrainingDiverged, match="the newest checkpoint is .*step-00000003.pt"):
        Trainer(config, run_dir=tmp_path).run()
    assert names(tmp_path) == ["step-00000002.pt", "step-00000003.pt"]  # the good ones survive rotation
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000003.pt")["counters"]["consecutive_nonfinite"] == 0
    assert "no checkpoint written, the last 1 step(s) were not finite" in capsys.readouterr().out


def test_a_streak_that_ends_keeps_checkpointing(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {3, 4})
    result = Trainer(tiny_config("log.checkpoint_every=1", "log.keep_checkpoints=10"), run_dir=tmp_path).run()
    assert result.step == 6
    assert names(tmp_path) == [f"step-0000000{i}.pt" for i in (1, 2, 5, 6)]


def test_a_stop_during_a_streak_writes_no_checkpoint(tmp_path, monkeypatch, capsys):
    poison_steps(monkeypatch, {3, 4, 5, 6})

    def stop_at_four(trainer, step):
        if step == 4:
            trainer.request_stop("test")

    result = Trainer(tiny_config("log.checkpoint_every=2"), run_dir=tmp_path, on_step=stop_at_four).run()
    assert result.interrupted and names(tmp_path) == ["step-00000002.pt"]
    assert "the newest checkpoint is" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# One owner per run directory; runs never mixed

def test_a_second_run_on_a_busy_directory_fails_naming_the_holder(tmp_path):
    seen = []

    def try_a_second_run(trainer, step):
        if step == 1:
            with pytest.raises(RunDirectoryBusy, match=f"in use by another run \\(pid {os.getpid()}") as error:
                Trainer(tiny_config(), run_dir=tmp_path).run()
            seen.append(str(error.value))

    Trainer(tiny_config(), run_dir=tmp_path, on_step=try_a_second_run).run()
    assert seen and names(tmp_path) == ["step-00000006.pt"]
    with RunDirectoryLock(tmp_path):  # released at the end of the run
        pass


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        from imm_ext.train.run_directory import RunDirectoryLock
        lock = RunDirectoryLock({str(tmp_path)!r}).__enter__()
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid}"):
            RunDirectoryLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with RunDirectoryLock(tmp_path):
        pass


def test_a_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    Trainer(tiny_config("train.steps=2"), run_dir=tmp_path).run()
    before = (tmp_path / "checkpoints" / "step-00000002.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds checkpoints of an earlier run .*--resume auto"):
        Trainer(tiny_config("train.steps=2"), run_dir=tmp_path).run()
    assert (tmp_path / "checkpoints" / "step-00000002.pt").read_bytes() == before


def test_another_runs_checkpoint_is_refused_where_checkpoints_exist(tmp_path):
    Trainer(tiny_config("train.steps=2"), run_dir=tmp_path / "a").run()
    Trainer(tiny_config("train.steps=3"), run_dir=tmp_path / "b").run()
    foreign = tmp_path / "b" / "checkpoints" / "step-00000003.pt"
    with pytest.raises(ConfigError, match="not a checkpoint of .*mix"):
        Trainer(tiny_config("train.steps=5"), run_dir=tmp_path / "a", resume=str(foreign)).run()
    assert names(tmp_path / "a") == ["step-00000002.pt"]
    forked = Trainer(tiny_config("train.steps=5"), run_dir=tmp_path / "c", resume=str(foreign)).run()
    assert forked.step == 5 and names(tmp_path / "b") == ["step-00000003.pt"]


def test_an_older_checkpoint_is_refused_while_newer_ones_exist(tmp_path):
    Trainer(tiny_config("log.checkpoint_every=2"), run_dir=tmp_path).run()
    with pytest.raises(ConfigError, match="newer checkpoints \\(step-00000004.pt, step-00000006.pt\\)"):
        Trainer(tiny_config("train.steps=8"), run_dir=tmp_path,
                resume=str(tmp_path / "checkpoints" / "step-00000002.pt")).run()


def test_orphaned_temporaries_are_removed_when_a_run_starts(tmp_path):
    Trainer(tiny_config("train.steps=2"), run_dir=tmp_path).run()
    orphan = tmp_path / "checkpoints" / ".step-00000003.pt.abc123.tmp"
    orphan.write_bytes(b"PK\x03\x04 torn")
    unrelated = tmp_path / "checkpoints" / "notes.txt"
    unrelated.write_text("mine")
    Trainer(tiny_config("train.steps=3"), run_dir=tmp_path, resume="auto").run()
    assert not orphan.exists() and unrelated.read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Torn and corrupt files

def test_a_torn_log_line_is_dropped_on_resume(tmp_path):
    config = tiny_config()

    def stop_at_four(trainer, step):
        if step == 4:
            trainer.request_stop("test")

    Trainer(config, run_dir=tmp_path, on_step=stop_at_four).run()
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 0.')  # a write cut short
    assert [entry["step"] for entry in read_log(tmp_path)] == [2, 4]
    Trainer(config, run_dir=tmp_path, resume="auto").run()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]


def test_a_damaged_log_line_in_the_middle_names_the_file_and_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 2}\n{"step": 4, "lo\n{"step": 6}\n')
    with pytest.raises(LogError, match="log.jsonl' line 2"):
        read_log(tmp_path)


def flip_a_weight_bit(path):
    """Flip one bit inside the bytes of a stored weight (torch.save stores tensor data uncompressed)."""
    data = bytearray(path.read_bytes())
    marker = torch.tensor([1.25, -3.5, 7.0625]).numpy().tobytes()
    at = data.index(marker)
    data[at + 1] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_weight_is_refused(tmp_path):
    payload = {"step": 1, "model": {"w": torch.tensor([1.25, -3.5, 7.0625])}, "config": ""}
    path = save_checkpoint(payload, tmp_path, keep=2)
    torch.load(path, weights_only=True)  # intact: loads
    flip_a_weight_bit(path)
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], payload["model"]["w"])  # torch won't see
    with pytest.raises(CheckpointError, match="is corrupt: its content does not match the digest"):
        load_checkpoint(path)


def test_version_1_checkpoints_without_a_digest_still_load(tmp_path):
    path = save_atomic({"format": "imm_ext.train.checkpoint", "version": 1, "step": 4, "model": {}, "config": ""},
                       tmp_path / "old.pt")
    assert load_checkpoint(path)["step"] == 4


def test_resume_auto_moves_a_corrupt_newest_checkpoint_aside(tmp_path, capsys):
    config = tiny_config("log.checkpoint_every=2", "train.steps=4")
    Trainer(config, run_dir=tmp_path).run()
    newest = tmp_path / "checkpoints" / "step-00000004.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    result = Trainer(tiny_config("log.checkpoint_every=2", "train.steps=6"), run_dir=tmp_path, resume="auto").run()
    assert result.step == 6 and "moved it aside" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "step-00000004.pt.corrupt").is_file()  # kept, out of rotation
    assert names(tmp_path) == ["step-00000002.pt", "step-00000004.pt", "step-00000006.pt"]


# ---------------------------------------------------------------------------------------------
# A resume continues the same run

@pytest.mark.parametrize("override,key", [
    ("data.options={n: 3000}", "data.options"), ("method.kind=flow_matching", "method.kind"),
    ("method.particles=2", "method.particles"), ("train.precision=bf16", "train.precision"),
    ("train.seed=5", "train.seed"), ("model.options.width=32", "model.options")])
def test_a_resume_that_would_train_something_else_is_refused(tmp_path, override, key):
    Trainer(tiny_config("train.steps=2"), run_dir=tmp_path).run()
    with pytest.raises(ConfigError, match=f"differs .*{key}: "):
        Trainer(tiny_config("train.steps=4", override), run_dir=tmp_path, resume="auto").run()
    assert names(tmp_path) == ["step-00000002.pt"]


def test_a_resume_may_change_the_length_logging_and_learning_rate(tmp_path, capsys):
    Trainer(tiny_config("train.steps=2"), run_dir=tmp_path).run()
    result = Trainer(tiny_config("train.steps=4", "log.log_every=1", "eval.steps=1", "optimizer.lr=5e-4"),
                     run_dir=tmp_path, resume="auto").run()
    assert result.step == 4
    assert "optimizer.lr: 0.001 -> 0.0005" in capsys.readouterr().err


def test_a_longer_resume_under_a_decaying_learning_rate_says_the_schedule_changed(tmp_path, capsys):
    Trainer(tiny_config("train.steps=2", "optimizer.schedule=cosine"), run_dir=tmp_path).run()
    Trainer(tiny_config("train.steps=4", "optimizer.schedule=cosine"), run_dir=tmp_path, resume="auto").run()
    assert "train.steps: 2 -> 4" in capsys.readouterr().err
