"""bench/harness.py, the timing protocol the benchmarks share: rounds time every call once each in a
fixed order after its untimed reset, warm-up rounds are not timed, and median and worst are reported;
and bench/gradient_protocols.py, which times forward + backward under each way of handing out gradients."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import harness  # noqa: E402


def test_rounds_interleave_the_calls_and_reset_each_before_it(monkeypatch):
    order = []
    calls = {name: (lambda name=name: order.append(name), lambda name=name: order.append("reset " + name))
             for name in ("a", "b")}
    times = harness.time_in_rounds(calls, "cpu", max_rounds=3, budget_s=float("inf"), warmup=1)
    assert order == ["reset a", "a", "reset b", "b"] * 4  # one warm-up round, then three timed
    assert {key: t.count for key, t in times.items()} == {"a": 3, "b": 3}


def test_median_and_worst_come_from_the_timed_calls(monkeypatch):
    durations = iter([0.001, 0.005, 0.002])
    monkeypatch.setattr(harness, "timed", lambda call, device: next(durations))
    times = harness.time_in_rounds({"only": (lambda: None, lambda: None)}, "cpu", 3, float("inf"))["only"]
    assert (times.median_ms, times.worst_ms, times.count) == (2.0, 5.0, 3)
    assert times.calls_ms == (1.0, 5.0, 2.0)  # every call, in order


def test_a_spent_budget_stops_after_the_round_it_is_in():
    times = harness.time_in_rounds({"k": (lambda: None, lambda: None)}, "cpu", max_rounds=100, budget_s=0.0)
    assert times["k"].count == 1


def test_machine_info_names_the_machine_and_the_load():
    info = harness.machine_info("cpu")
    assert info["cpu"] and info["cpu_count"] >= 1 and info["torch_threads"] >= 1 and info["gpu"] is None
    assert info["load_average_at_start"] is None or len(info["load_average_at_start"]) == 3


def test_gradient_protocols_reset_or_keep_the_gradient_as_named():
    import torch
    import gradient_protocols

    leaves = [torch.ones(3, requires_grad=True)]
    seen = []

    def loss(x):
        seen.append(None if x.grad is None else x.grad.clone())
        return x.sum()

    for protocol, expect_kept in (("fresh", False), ("accumulated", True), ("after eager", False)):
        seen.clear()
        call, reset = gradient_protocols.protocol_calls(loss, leaves, protocol, 64, [])
        for _ in range(3):
            reset()
            call()
        kept = [grad is not None for grad in seen[1:]]
        assert kept == [expect_kept] * 2, protocol
        leaves[0].grad = None


def test_through_a_layer_the_loss_sees_an_intermediate_with_the_leafs_values():
    import torch
    import gradient_protocols

    leaf = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    seen = []

    def loss(x):
        seen.append(x)
        return (x * x).sum()

    call, reset = gradient_protocols.protocol_calls(loss, [leaf], "through a layer", 64, [])
    for _ in range(2):
        reset()
        call()
    assert all(not x.is_leaf and x.grad_fn is not None and torch.equal(x, leaf.detach()) for x in seen)
    assert seen[0] is not seen[1] and leaf.grad is None  # a new intermediate each call; the leaf untouched


def test_gradient_protocols_time_every_pair_and_count_faults():
    import torch
    import gradient_protocols

    losses = {"a": lambda x: (x * 2).sum(), "b": lambda x: x.square().sum()}
    results = gradient_protocols.time_protocols(losses, lambda: [torch.randn(64, requires_grad=True)], "cpu",
                                                max_rounds=3, budget_s=float("inf"), scratch_bytes=1024)
    assert list(results) == list(gradient_protocols.PROTOCOLS)
    for protocol, methods in results.items():
        assert set(methods) == {"a", "b", *(["layer alone"] if protocol == "through a layer" else [])}
        assert all(m["count"] == 3 and m["faults_per_call"] >= 0 for m in methods.values())
        assert all(len(m["calls_ms"]) == len(m["faults"]) == 3 for m in methods.values())
    limits = {protocol: 1.0 + i for i, protocol in enumerate(gradient_protocols.PROTOCOLS)}
    table = gradient_protocols.format_protocols("t", results, "a", "b", limits)
    assert table.count("\n| ") == 2 + len(gradient_protocols.PROTOCOLS)
    layer = results["through a layer"]
    own = [layer[m]["median_ms"] - layer["layer alone"]["median_ms"] for m in ("a", "b")]
    assert f"| through a layer, less the layer alone ({layer['layer alone']['median_ms']:.1f} ms) | " \
           f"{own[0]:.1f} / - | {own[1]:.1f} / - | {own[0] / own[1]:.2f} / - | " \
           f"{own[0] / limits['through a layer']:.2f} | - |" in table
    accumulated = results["accumulated"]["a"]["median_ms"] / limits["accumulated"]
    assert next(line for line in table.splitlines() if line.startswith("| accumulated |")).split(" | ")[4] \
        == f"{accumulated:.2f}"


def test_the_layer_alone_runs_the_layers_forward_and_backward_into_its_parameters():
    import torch
    import gradient_protocols

    leaf = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    layer, (weight, bias) = gradient_protocols.affine_layer(leaf)
    upstream = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    out = layer()
    out.backward(upstream)
    assert torch.equal(out, leaf.detach()) and leaf.grad is None
    assert torch.equal(weight.grad, (upstream * leaf.detach()).sum(0)) and torch.equal(bias.grad, upstream.sum(0))
    call, reset = gradient_protocols.layer_alone_calls(leaf, faults := [])
    for _ in range(2):
        reset()
        call()
    assert len(faults) == 2 and leaf.grad is None
