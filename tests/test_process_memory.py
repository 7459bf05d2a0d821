"""freed_memory_kept(): inside it, freed large blocks are mostly reused without page faults (glibc); a
CPU training run holds it unless train.keep_freed_memory=false. The fault counts run in their own
process: the setting is process-wide."""
import contextlib
import json
import platform
import subprocess
import sys

import pytest

from conftest import tiny_config
from imm_ext.train import trainer as trainer_module
from imm_ext.train.trainer import Trainer

ROUND_FAULTS = """
import json, resource, torch
from imm_ext.process_memory import freed_memory_kept
def rounds(count=10):  # a training loop's pattern: the same large blocks taken, touched and freed again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        a = torch.empty(16 * 2 ** 20)  # 64 MiB: above glibc's largest mmap threshold
        b = torch.empty(4 * 2 ** 20)
        a.fill_(1.0)
        b.fill_(1.0)
        del a, b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = rounds()
with freed_memory_kept() as kept:
    inside = rounds()
print(json.dumps(dict(default=default, kept=kept, inside=inside)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_blocks_are_reused_without_page_faults_while_kept():
    done = subprocess.run([sys.executable, "-c", ROUND_FAULTS], capture_output=True, text=True, check=True,
                          timeout=120)
    faults = json.loads(done.stdout)
    assert faults["kept"] is True
    assert faults["default"] >= 10 * 40  # every round faults its 80 MiB in again (4 KiB or 2 MiB pages)
    # Kept, the heap grows to hold the blocks (a round or two of faults) and later rounds reuse them.
    assert faults["inside"] <= faults["default"] // 3


@pytest.mark.parametrize("setting, entered", [("true", 1), ("false", 0)])
def test_cpu_training_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch, setting, entered):
    seen = []

    @contextlib.contextmanager
    def spy():
        seen.append(True)
        yield True

    monkeypatch.setattr(trainer_module, "freed_memory_kept", spy)
    Trainer(tiny_config(f"train.keep_freed_memory={setting}"), run_dir=tmp_path).run()
    assert len(seen) == entered
