"""Fault injection in the trainer: a run is SIGKILLed at each point of a checkpoint write (half-written
file, before and after the rename, mid-rotation), in the middle of a step, in the middle of a log
line, and between the last checkpoint and the summary; after each kill the newest checkpoint loads and
verifies, and the run resumed to the end is bit-identical to one that never stopped, with a log of
exactly one line per step. A full disk and a read-only directory stop the run with the previous
checkpoint intact.

Kills at random moments run too: two by default, IMM_EXT_SOAK=N for a longer soak of N."""
import errno
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from imm_ext.train import Trainer
from imm_ext.train import checkpoint as checkpoint_module
from imm_ext.train.checkpoint import list_checkpoints, load_checkpoint

from conftest import tiny_config

STEPS = 12
OVERRIDES = [f"train.steps={STEPS}", "log.checkpoint_every=1", "log.keep_checkpoints=2", "log.log_every=1"]

# Runs the tiny training with --resume auto in a child process, SIGKILLing itself at one fault point.
CHILD = textwrap.dedent("""
    import io, json, os, pathlib, signal, sys
    import torch
    from imm_ext.train import Trainer
    from imm_ext.train import methods, run_log
    from imm_ext.train.checkpoint import checkpoint_name
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config

    run_dir, point, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target = checkpoint_name(at)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_save, real_replace, real_unlink = torch.save, os.replace, pathlib.Path.unlink
    state = {{"writing": False}}

    def save(obj, handle, *args, **kwargs):
        if point == "partial-write" and isinstance(obj, dict) and obj.get("step") == at:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            die()
        return real_save(obj, handle, *args, **kwargs)

    def replace(source, destination):
        hit = os.path.basename(str(destination)) == target
        summary = os.path.basename(str(destination)) == "summary.json"
        if (hit and point == "before-replace") or (summary and point == "before-summary"):
            die()
        real_replace(source, destination)
        if hit and point == "after-replace":
            die()
        state["writing"] = state["writing"] or hit

    def unlink(self, *args, **kwargs):
        real_unlink(self, *args, **kwargs)
        if point == "rotation" and state["writing"]:
            die()

    real_loss, calls = methods.IMMTraining.loss, iter(range(10 ** 6))

    def loss(self):
        loss_fn = real_loss(self)
        def wrapped(*args):
            if point == "mid-step" and next(calls) == 2 * (at - start) + 1:  # step at's second micro-batch
                die()
            return loss_fn(*args)
        return wrapped

    found = sorted(pathlib.Path(run_dir, "checkpoints").glob("step-*.pt"))
    start = int(found[-1].stem.split("-")[1]) + 1 if found else 1  # the first step this process trains

    real_record = run_log.RunLog.record

    def record(self, step, values):
        if point == "log-line" and step == at:
            self.log_file.write(json.dumps({{"step": step, **values}})[:17])
            self.log_file.flush()
            die()
        return real_record(self, step, values)

    torch.save, os.replace, pathlib.Path.unlink = save, replace, unlink
    methods.IMMTraining.loss, run_log.RunLog.record = loss, record
    Trainer(tiny_config(*{overrides!r}), run_dir=run_dir, resume="auto").run()
""")

FAULTS = [("partial-write", 2), ("before-replace", 4), ("after-replace", 5), ("rotation", 7), ("mid-step", 9),
          ("log-line", 10), ("before-summary", STEPS)]


def run_child(tmp_path, run_dir, point="none", at=0, timeout=300):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__), overrides=OVERRIDES))
    return subprocess.run([sys.executable, str(script), str(run_dir), point, str(at)], capture_output=True,
                          text=True, timeout=timeout)


def assert_newest_checkpoint_is_good(run_dir, expected_step):
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    assert load_checkpoint(newest)["step"] == expected_step, newest


def assert_bit_identical(run_dir, reference_dir):
    ours = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    theirs = load_checkpoint(list_checkpoints(reference_dir / "checkpoints")[-1])
    assert ours["step"] == theirs["step"] == STEPS
    for key in ("model", "ema"):
        flat_ours, flat_theirs = ours[key] if key == "model" else ours[key]["model"], (
            theirs[key] if key == "model" else theirs[key]["model"])
        assert all(torch.equal(flat_ours[name], flat_theirs[name]) for name in flat_theirs), key
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    reference_log = [json.loads(line) for line in (reference_dir / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, STEPS + 1))
    assert [entry["loss"] for entry in log] == [entry["loss"] for entry in reference_log]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    Trainer(tiny_config(*OVERRIDES), run_dir=run_dir).run()
    return run_dir


def test_kills_at_every_fault_point_lose_nothing(tmp_path, reference_run):
    run_dir = tmp_path / "run"
    for point, at in FAULTS:
        child = run_child(tmp_path, run_dir, point, at)
        assert child.returncode == -9, f"{point}@{at} did not fire:\n{child.stderr[-2000:]}"
        # What survives the kill: the checkpoint of the killed step only once its rename happened.
        survived = at if point in ("after-replace", "rotation", "before-summary") else at - 1
        assert_newest_checkpoint_is_good(run_dir, survived)
    finished = run_child(tmp_path, run_dir)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not any(name.name.endswith(".tmp") for name in (run_dir / "checkpoints").iterdir())
    assert_bit_identical(run_dir, reference_run)


def test_kills_at_random_moments_lose_nothing(tmp_path, reference_run):
    run_dir, generator = tmp_path / "run", random.Random(0)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__), overrides=OVERRIDES))
    for _ in range(int(os.environ.get("IMM_EXT_SOAK", "2"))):
        child = subprocess.Popen([sys.executable, str(script), str(run_dir), "none", "0"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        child.stdout.readline()  # the trainer's first line: training starts
        try:
            child.wait(timeout=generator.uniform(0.0, 1.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if list_checkpoints(run_dir / "checkpoints"):
            load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
        if child.returncode == 0:
            break
    if not (run_dir / "summary.json").is_file():
        assert run_child(tmp_path, run_dir).returncode == 0
    assert_bit_identical(run_dir, reference_run)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     PermissionError(errno.EROFS, "Read-only file system")])
def test_a_full_disk_or_read_only_directory_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure,
                                                                         reference_run):
    real_mkstemp, calls = checkpoint_module.tempfile.mkstemp, iter(range(10 ** 6))

    def failing_mkstemp(*args, **kwargs):
        if next(calls) == 3:  # the fourth checkpoint
            raise failure
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", failing_mkstemp)
    with pytest.raises(OSError, match=failure.strerror):
        Trainer(tiny_config(*OVERRIDES), run_dir=tmp_path).run()
    assert_newest_checkpoint_is_good(tmp_path, 3)
    monkeypatch.undo()
    Trainer(tiny_config(*OVERRIDES), run_dir=tmp_path, resume="auto").run()
    assert_bit_identical(tmp_path, reference_run)
