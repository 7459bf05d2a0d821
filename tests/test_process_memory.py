"""freed_memory_kept(): inside it a freed large block is reused without page faults once the heap has
grown to hold it (glibc), after it glibc's defaults are back; a CPU training run holds it unless
train.keep_freed_memory=false. The fault counts run in their own process: the setting is process-wide."""
import contextlib
import json
import platform
import subprocess
import sys

import pytest

from conftest import tiny_config
from imm_ext.train import trainer as trainer_module
from imm_ext.train.trainer import Trainer

SECOND_TOUCH_FAULTS = """
import json, resource, torch
from imm_ext.process_memory import freed_memory_kept
def touched():
    x = torch.empty(16 * 2 ** 20)  # 64 MiB: above glibc's largest mmap threshold
    x.fill_(1.0)
    return x
def second_touch_faults():
    first = touched()
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = touched()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = second_touch_faults()
with freed_memory_kept() as kept:
    second_touch_faults()  # the heap grows to hold the block once (as on a training run's first step)
    inside = second_touch_faults()
print(json.dumps(dict(default=default, kept=kept, inside=inside, after=second_touch_faults())))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_freed_block_is_reused_without_page_faults_while_kept():
    done = subprocess.run([sys.executable, "-c", SECOND_TOUCH_FAULTS], capture_output=True, text=True, check=True,
                          timeout=120)
    faults = json.loads(done.stdout)
    assert faults["kept"] is True
    assert faults["default"] >= 32  # 64 MiB faulted in again, in 4 KiB (or, huge pages always on, 2 MiB) pages
    assert faults["inside"] <= faults["default"] // 8
    assert faults["after"] >= faults["default"] // 2  # the defaults are back: freed means given back


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
