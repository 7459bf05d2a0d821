"""Checkpoint files: a write that dies part-way leaves the previous checkpoint loadable, truncated or
corrupt or foreign files fail with a clear error, nothing is unpickled, rotation keeps the newest K, and
every random generator comes back exactly."""
import os
import pickle
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from imm_ext.train.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                      resolve_resume, save_atomic, save_checkpoint)
from imm_ext.train.rng_state import capture_rng_state, restore_rng_state


def payload(step):
    return {"step": step, "model": {"w": torch.full((4,), float(step))}, "config": "train: {}\n"}


def test_save_and_load(tmp_path):
    path = save_checkpoint(payload(3), tmp_path, keep=2)
    assert path.name == "step-00000003.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.full((4,), 3.0))


def test_rotation_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(payload(step), tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003.pt", "step-00000004.pt"]
    assert latest_checkpoint(tmp_path).name == "step-00000004.pt"
    assert resolve_resume("auto", tmp_path).name == "step-00000004.pt"
    assert resolve_resume("auto", tmp_path / "none") is None
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)


def test_an_exception_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(payload(1), tmp_path, keep=3)

    def dies_half_way(obj, handle):
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(payload(2), tmp_path, keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001.pt"]  # no torn file, no temporary left
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1


def test_a_process_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    """The writer process dies (os._exit) after writing part of the data: the previous checkpoint is still
    the newest loadable one, and the leftover temporary file is ignored."""
    save_checkpoint(payload(1), tmp_path, keep=3)
    script = textwrap.dedent(f"""
        import os, torch
        from imm_ext.train.checkpoint import save_checkpoint
        def dies(obj, handle):
            handle.write(b"PK\\x03\\x04" + bytes(1000))
            handle.flush()
            os._exit(9)
        torch.save = dies
        save_checkpoint({{"step": 2, "model": {{}}, "config": ""}}, {str(tmp_path)!r}, keep=3)
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 9
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert latest_checkpoint(tmp_path).name == "step-00000001.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1


def test_truncated_and_corrupt_checkpoints_give_a_clear_error(tmp_path):
    path = save_checkpoint(payload(5), tmp_path, keep=3)
    data = path.read_bytes()
    truncated = tmp_path / "step-00000006.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(512))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "imm_ext.train.checkpoint", "obj": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    foreign = save_atomic({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an imm_ext training checkpoint"):
        load_checkpoint(foreign)


def test_every_generator_is_restored(tmp_path):
    generator = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(4)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    state = capture_rng_state({"loss": generator})
    save_atomic(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), torch.rand(3), torch.rand(3, generator=generator))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), generator.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), {"loss": generator})
    again = (random.random(), np.random.normal(), torch.rand(3), torch.rand(3, generator=generator))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])
