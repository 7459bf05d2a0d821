"""The loss, backward, clipping and EMA update of a training step read no tensor value back to the host
(nor does the trainer's step around them, test_step_guard.py):
on a GPU each such read would stall the stream (a host-device synchronisation per step). The value
checks on the way (labels in range, 0 <= s <= t, finite coefficients and bandwidths) go through
`ops.checks.require_all`, which raises at once on the CPU and queues a device-side assertion elsewhere.

On CUDA, torch's sync debug mode fails on any synchronisation. On the CPU, where there is nothing to
wait for, a shim counts the Python-level reads of tensor values (bool, item, tolist, float, int)
outside require_all instead."""
import collections
import contextlib
import sys

import pytest
import torch

from imm_ext.method.presets import PRESETS
from imm_ext.models import DiT
from imm_ext.ops import checks
from imm_ext.train.config import MethodConfig
from imm_ext.train.ema import EMA
from imm_ext.train.methods import training_method

READS = ("__bool__", "item", "tolist", "__float__", "__int__")


@contextlib.contextmanager
def counted_host_reads(monkeypatch):
    """Counter of tensor value reads by Python code (those inside require_all under "require_all")."""
    counts = collections.Counter()

    def inside_require_all() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code is checks.require_all.__code__:
                return True
            frame = frame.f_back
        return False

    for name in READS:
        def reader(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
            counts["require_all" if inside_require_all() else _name] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, reader)
    yield counts
    monkeypatch.undo()


def conditional_dit(device):
    return DiT(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2, heads=2, num_classes=10,
               seed=0).to(device)


def training_parts(kind, device):
    """A conditional DiT, the method's f_{s,t} around it, its loss and an EMA."""
    method = training_method(MethodConfig.from_preset(PRESETS["digits"], kind=kind))
    network = conditional_dit(device)
    return method.loss(), method.parametrization(network, null_label=10), network, EMA(network, 0.999, True)


def one_step(loss_fn, model, network, ema, device):
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=generator, device=device)
    labels = torch.randint(0, 10, (16,), generator=generator, device=device)
    loss, _ = loss_fn(model, x, labels, generator)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    ema.update(network)
    return loss


@pytest.mark.parametrize("method", ["imm", "flow_matching"])
def test_a_cpu_step_reads_values_only_in_the_device_side_checks(monkeypatch, method):
    parts = training_parts(method, "cpu")
    with counted_host_reads(monkeypatch) as counts:
        loss = one_step(*parts, "cpu")
    assert torch.isfinite(loss)
    assert {name: n for name, n in counts.items() if name != "require_all"} == {}
    if method == "imm":  # the labels and the mapping's times are checked, through require_all
        assert counts["require_all"] >= 2


def test_the_shim_sees_a_read_where_there_is_one(monkeypatch):
    with counted_host_reads(monkeypatch) as counts:
        bool(torch.ones(()) > 0)
        checks.require_all(torch.ones(3, dtype=torch.bool), "unused")
    assert counts == {"__bool__": 1, "require_all": 1}


@pytest.mark.parametrize("labels, message", [([0, 11], r"labels must lie in \[0, 10\]"), ([-1, 3], "labels")])
def test_out_of_range_labels_still_fail_by_name(labels, message):
    network = conditional_dit("cpu")
    with pytest.raises(ValueError, match=message):
        network(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2), torch.tensor(labels))


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["imm", "flow_matching"])
def test_a_cuda_step_never_synchronises(method):
    parts = training_parts(method, "cuda")
    one_step(*parts, "cuda")  # warm-up: first calls may set things up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        one_step(*parts, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_out_of_range_labels_fail_under_compile_too():
    """The check is part of the compiled graph (a device-side assertion), not skipped while compiling."""
    network = conditional_dit("cpu")
    compiled = torch.compile(network, fullgraph=True)
    inputs = (torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2))
    assert compiled(*inputs, torch.tensor([0, 10])).shape == (2, 1, 8, 8)
    with pytest.raises(RuntimeError, match="labels must lie in"):
        compiled(*inputs, torch.tensor([0, 11]))


@pytest.mark.cuda
def test_a_cuda_training_step_never_synchronises(tmp_path):
    """The trainer's step keeps its non-finite guard on the device (step_guard.py): steps that are neither
    logged nor checkpointed read nothing back; sync debug mode warns once per synchronisation."""
    import warnings

    from imm_ext.train import Trainer
    from conftest import tiny_config

    seen = []

    def on_step(trainer, step):
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        seen.append(len(caught))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Trainer(tiny_config("train.device=cuda", "log.log_every=100"), run_dir=tmp_path / "run",
                    on_step=on_step).run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    per_step = [later - earlier for earlier, later in zip(seen[1:-2], seen[2:-1])]  # steps 3..5, none logged
    assert per_step and all(count == 0 for count in per_step), per_step
