"""The `imm-ext` command end to end on a tiny 2-D run: train, sample (PNG and NPZ), eval, resume to more
steps, stop on SIGTERM with a checkpoint, and clear errors for bad overrides, missing data and corrupt
checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from imm_ext.cli import main

TINY = ["model.options.width=16", "model.options.depth=1", "train.threads=1", "train.batch_size=64", "eval.steps=1,2",
        "eval.num_samples=64", "eval.batch_size=64", "log.log_every=2", "log.progress=false",
        "log.tensorboard=false", "data.options={n: 2000}"]


def train(tmp_path, *extra):
    return main(["train", "--preset", "toy2d", "--name", "cli", f"log.root={tmp_path}", *TINY, *extra])


def test_train_sample_eval_resume(tmp_path, capsys):
    assert train(tmp_path, "train.steps=4") == 0
    run = tmp_path / "cli"
    checkpoint = run / "checkpoints" / "step-00000004.pt"
    assert checkpoint.is_file() and (run / "metrics.json").is_file() and (run / "config.yaml").is_file()
    assert "steps" in capsys.readouterr().out  # the printed metrics table

    assert main(["sample", "--ckpt", str(checkpoint), "--steps", "1,2", "--n", "50",
                 "--out", str(tmp_path / "grid.png"), "--seed", "3"]) == 0
    assert (tmp_path / "grid-1step.png").is_file() and (tmp_path / "grid-2step.png").is_file()
    assert main(["sample", "--ckpt", str(checkpoint), "--steps", "2", "--n", "30", "--no-ema",
                 "--out", str(tmp_path / "samples.npz")]) == 0
    arrays = np.load(tmp_path / "samples.npz")
    assert arrays["samples_2step"].shape == (30, 2) and np.isfinite(arrays["samples_2step"]).all()

    assert main(["eval", "--ckpt", str(checkpoint), "--steps", "1", "--n", "64",
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert "energy" in json.loads((tmp_path / "eval.json").read_text())["metrics_by_steps"]["1"]

    assert train(tmp_path, "train.steps=6", "--resume", "auto") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-00000006.pt"
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [2, 4, 6]

    assert train(tmp_path, "train.steps=8") == 2  # a fresh run would mix with this one's checkpoints
    assert "already holds checkpoints of an earlier run" in capsys.readouterr().err
    # --resume auto without --preset continues with the checkpoint's own settings (toy2d, not digits).
    assert main(["train", "--resume", "auto", "--name", "cli", f"log.root={tmp_path}", "train.steps=8"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-00000008.pt"


def test_sigterm_stops_with_a_checkpoint_then_resumes(tmp_path):
    command = [sys.executable, "-m", "imm_ext.cli", "train", "--preset", "toy2d", "--name", "sig",
               f"log.root={tmp_path}", *TINY, "train.steps=100000", "log.checkpoint_every=100000"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log = tmp_path / "sig" / "log.jsonl"
    deadline = time.monotonic() + 180
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGTERM" in stderr
    checkpoints = list((tmp_path / "sig" / "checkpoints").glob("step-*.pt"))
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].stem.split("-")[1])
    assert main(["train", "--resume", str(checkpoints[0]), f"train.steps={stopped_at + 2}",
                 "log.progress=false", "eval.steps=1"]) == 0
    assert (tmp_path / "sig" / "checkpoints" / f"step-{stopped_at + 2:08d}.pt").is_file()


@pytest.mark.parametrize("arguments, message", [
    (["train", "--preset", "toy2d", "train.batchsize=4"], "unknown config key 'train.batchsize'"),
    (["train", "--preset", "toy2d", "optimizer.lr=fast"], "optimizer.lr: must be a number"),
    (["train", "--preset", "toy2d", "data.name=folder", "data.path=/no/such/folder"], "data"),
    (["train", "--preset", "toy2d", "data.name=no-such-data"], "data.name"),
    (["train", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
])
def test_errors_are_reported_clearly(arguments, message, capsys, tmp_path):
    assert main([*arguments, f"log.root={tmp_path}"] if arguments[1] != "--config" else arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("imm-ext train: error:") and message in error, error


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    broken = tmp_path / "step-00000001.pt"
    broken.write_bytes(b"PK\x03\x04not a checkpoint")
    assert main(["sample", "--ckpt", str(broken)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_default_job_is_the_digits_preset(capsys):
    assert main(["train", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "preset: digits" in printed and "name: digits" in printed
