"""The device-side guard of a training step: a skipped optimiser step or EMA update changes nothing, a
taken one is the plain update, and a whole training step reads nothing back to the host unless it is
a logged or checkpoint step."""
import copy

import pytest
import torch

from imm_ext.train.components import build_optimizer
from imm_ext.train.config import OptimizerConfig
from imm_ext.train.ema import EMA
from imm_ext.train.step_guard import StepGuard, optimizer_step_unless
from imm_ext.train.distributed import DistributedContext

from test_host_syncs import counted_host_reads


def network_and_optimizer(name):
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return network, build_optimizer(network.parameters(), OptimizerConfig(name=name, lr=1e-2, weight_decay=0.1))


def backward(network, seed):
    network.zero_grad(set_to_none=True)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(seed))
    network(x).square().mean().backward()


def everything(network, optimizer):
    """The parameters and every optimiser state tensor, copied."""
    state = [value.clone() for p in network.parameters() for value in optimizer.state.get(p, {}).values()
             if isinstance(value, torch.Tensor)]
    return [p.detach().clone() for p in network.parameters()] + state


@pytest.mark.parametrize("name", ["adamw", "adam", "radam"])
def test_a_skipped_step_changes_nothing_and_a_taken_one_is_the_plain_step(name):
    network, optimizer = network_and_optimizer(name)
    reference, plain = copy.deepcopy(network), None
    plain = build_optimizer(reference.parameters(), OptimizerConfig(name=name, lr=1e-2, weight_decay=0.1))
    # a skipped first step (the state it creates goes back to the fresh state), then steps taken and skipped
    for seed, skip in enumerate([1.0, 0.0, 1.0, 0.0, 0.0]):
        before = everything(network, optimizer)
        backward(network, seed)
        if skip:
            for p in network.parameters():
                p.grad[0].fill_(float("nan"))
        optimizer_step_unless(optimizer, torch.tensor(skip))
        if skip:
            after = everything(network, optimizer)
            if before:  # the same tensors, bit for bit
                assert all(torch.equal(a, b) for a, b in zip(before, after))
            assert all(torch.isfinite(t).all() for t in after)
        else:
            backward(reference, seed)
            plain.step()
    assert all(torch.equal(a, b) for a, b in zip(network.parameters(), reference.parameters()))
    steps = [state["step"] for state in optimizer.state.values()]
    assert all(float(step) == 3 for step in steps)


@pytest.mark.parametrize("warmup", [False, True])
def test_a_skipped_ema_update_changes_nothing_and_does_not_count(warmup):
    network, _ = network_and_optimizer("adamw")
    ema, plain = EMA(network, 0.9, warmup), EMA(network, 0.9, warmup)
    for index, skip in enumerate([0.0, 1.0, 0.0, 1.0]):
        with torch.no_grad():
            for p in network.parameters():
                p.add_(0.1 * (index + 1))
        before = [p.clone() for p in ema.model.parameters()]
        ema.update(network, torch.tensor(skip))
        if skip:
            assert all(torch.equal(a, b) for a, b in zip(before, ema.model.parameters()))
        else:
            plain.update(network)
    assert ema.state_dict()["updates"] == 2
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), plain.model.parameters()))


def test_the_guard_counts_skips_streaks_and_finite_losses():
    guard = StepGuard(torch.device("cpu"), counts_overflow_as_streak=True)
    context = DistributedContext()
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    flags = [guard.verdict(context, loss, norm) for loss, norm in
             [(one, one), (nan, one), (one, nan), (torch.tensor(3.0), one)]]
    assert [float(f) for f in flags] == [0, 1, 1, 0]
    counts = guard.read({"grad_norm": one})
    assert counts == {"skipped_total": 2, "consecutive_nonfinite": 0, "loss_sum": 5.0, "loss_count": 3,
                      "grad_norm": 1.0}
    guard.verdict(context, nan, one)
    guard.start_interval()
    assert guard.state_dict() == {"skipped_total": 3, "consecutive_nonfinite": 1, "loss_sum": 0.0, "loss_count": 0}
    # under a GradScaler an overflowing gradient skips the step but is not part of a streak
    scaled = StepGuard(torch.device("cpu"), counts_overflow_as_streak=False)
    assert float(scaled.verdict(context, one, nan)) == 1
    assert scaled.read()["consecutive_nonfinite"] == 0 and scaled.read()["skipped_total"] == 1


def test_a_training_step_reads_nothing_back_between_logged_steps(tmp_path, monkeypatch):
    """The whole trainer step on the CPU, counted by the host-read shim: the guard's counters come back
    on logged and checkpoint steps only (steps 2 and 4 here), one transfer each."""
    from imm_ext.train import Trainer
    from conftest import tiny_config

    reads_after_step = {}
    with counted_host_reads(monkeypatch) as counts:
        def on_step(trainer, step):
            reads_after_step[step] = sum(n for name, n in counts.items() if name != "require_all")

        Trainer(tiny_config("train.steps=5", "log.log_every=2", "log.checkpoint_every=4"), run_dir=tmp_path,
                on_step=on_step).run()
    per_step = {step: reads_after_step[step] - reads_after_step[step - 1] for step in (2, 3, 4, 5)}
    assert per_step[3] == 0, per_step
    assert per_step[2] >= 1 and per_step[4] >= 1
