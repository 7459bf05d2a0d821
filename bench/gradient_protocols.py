"""How a training loop hands gradients to a loss, as timing protocols for forward + backward.

The same call can cost very different times depending on what happens to the gradient between calls:
    fresh        x.grad = None before each call (zero_grad's default): every backward writes a new
                 gradient buffer, which the allocator may have to map and the kernel fault in page by page;
    accumulated  x.grad kept between calls (gradient accumulation): the new gradient is added into it;
    after eager  fresh, after a large temporary was allocated and freed (an eager op's scratch in between),
                 which changes what the allocator holds when the gradient is allocated;
    through a layer  x is a layer's output (x = z * w + b per feature, w and b the layer's parameters, z = x's
                 values), as in a training step: x's gradient is autograd's own new intermediate on every
                 call, never a leaf's .grad, and flows on into w and b (the layer's cost is in both methods;
                 the layer alone, forward and backward from a stored gradient of x's shape, is timed in the
                 same rounds, so the loss's own part of the call is the difference).
Every (protocol, method) pair is timed in the same interleaved rounds (harness.py), so load changes reach all
alike; each call's minor page faults (getrusage) are counted beside its time.
"""
from __future__ import annotations

import resource
import statistics
from typing import Callable, Dict, Sequence

import torch

from harness import time_in_rounds

PROTOCOLS = ("fresh", "accumulated", "after eager", "through a layer")
LAYER_ALONE = "layer alone"
LAYER = ("through a layer", LAYER_ALONE)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def affine_layer(leaf: torch.Tensor) -> tuple:
    """(layer, its parameters): layer() = z * w + b per feature, z = leaf's values, w = 1 and b = 0."""
    z = leaf.detach()
    weight = torch.ones(z.shape[-1], dtype=z.dtype, device=z.device, requires_grad=True)
    bias = torch.zeros_like(weight, requires_grad=True)
    return (lambda: z * weight + bias), [weight, bias]


def layer_alone_calls(leaf: torch.Tensor, faults: list) -> tuple:
    """(call, reset) of the "through a layer" protocol's layer without the loss: its forward, then its
    backward from a stored gradient of the leaf's shape; each call appends its page faults."""
    layer, parameters = affine_layer(leaf)
    upstream = torch.randn_like(leaf.detach())

    def reset():
        for parameter in parameters:
            parameter.grad = None

    def call():
        before = minor_faults()
        layer().backward(upstream)
        faults.append(minor_faults() - before)
    return call, reset


def protocol_calls(loss: Callable, leaves: Sequence[torch.Tensor], protocol: str, scratch_bytes: int,
                   faults: list) -> tuple:
    """(call, reset) of loss(*leaves).backward() under one protocol (through a layer: loss(layer(z),
    *leaves[1:]) with z the first leaf's values); each call appends its page faults."""
    if protocol == "through a layer":
        layer, parameters = affine_layer(leaves[0])
        inputs, parameters = lambda: (layer(), *leaves[1:]), [*parameters, *leaves[1:]]
    else:
        inputs, parameters = lambda: leaves, leaves

    def reset():
        if protocol != "accumulated":
            for parameter in parameters:
                parameter.grad = None
        if protocol == "after eager":
            torch.empty(scratch_bytes, dtype=torch.uint8).fill_(0)  # allocated, touched and freed

    def call():
        before = minor_faults()
        loss(*inputs()).backward()
        faults.append(minor_faults() - before)
    return call, reset


def time_protocols(losses: Dict[str, Callable], make_leaves: Callable[[], Sequence[torch.Tensor]], device: str,
                   max_rounds: int, budget_s: float, scratch_bytes: int) -> Dict[str, Dict[str, dict]]:
    """{protocol: {method: {median_ms, worst_ms, count, faults_per_call, calls_ms, faults}}} (calls_ms and
    faults: every timed call's time and page faults, in order), every pair in the same rounds, after one
    untimed round (warm-up; it also leaves the accumulated protocol a .grad to add into). "through a
    layer" also holds LAYER_ALONE: the layer's own forward and backward, timed in the same rounds."""
    calls, faults = {}, {}
    for protocol in PROTOCOLS:
        for method, loss in losses.items():
            faults[protocol, method] = []
            calls[protocol, method] = protocol_calls(loss, make_leaves(), protocol, scratch_bytes,
                                                     faults[protocol, method])
    faults[LAYER] = []
    calls[LAYER] = layer_alone_calls(make_leaves()[0], faults[LAYER])
    times = time_in_rounds(calls, device, max_rounds, budget_s, warmup=1)
    summary = {key: dict(median_ms=times[key].median_ms, worst_ms=times[key].worst_ms, count=times[key].count,
                         faults_per_call=statistics.median(faults[key][1:]),
                         calls_ms=[round(t, 3) for t in times[key].calls_ms], faults=faults[key][1:])
               for key in calls}
    return {protocol: {method: summary[protocol, method] for method in (*losses, LAYER_ALONE)
                       if (protocol, method) in summary} for protocol in PROTOCOLS}


def format_protocols(title: str, results: Dict[str, Dict[str, dict]], ours: str, baseline: str,
                     limits_ms: Dict[str, float]) -> str:
    """Markdown: per protocol, both methods' median / worst ms, their ratio, ours against the protocol's
    memory-traffic limit (limits_ms) and page faults per call."""
    lines = [f"#### {title}: forward + backward by gradient protocol", "",
             f"| protocol | {ours} median / worst ms | {baseline} median / worst ms | ratio median / worst "
             f"| {ours} / limit | page faults per call {ours} / {baseline} |", "|---|---|---|---|---|---|"]
    for protocol, methods in results.items():
        a, b = methods[ours], methods[baseline]
        lines.append(f"| {protocol} | {a['median_ms']:.1f} / {a['worst_ms']:.1f} | {b['median_ms']:.1f} / "
                     f"{b['worst_ms']:.1f} | {a['median_ms'] / b['median_ms']:.2f} / "
                     f"{a['worst_ms'] / b['worst_ms']:.2f} | {a['median_ms'] / limits_ms[protocol]:.2f} | "
                     f"{a['faults_per_call']:.0f} / {b['faults_per_call']:.0f} |")
        if LAYER_ALONE in methods:
            layer = methods[LAYER_ALONE]["median_ms"]
            a_own, b_own = a["median_ms"] - layer, b["median_ms"] - layer
            lines.append(f"| {protocol}, less the layer alone ({layer:.1f} ms) | {a_own:.1f} / - | {b_own:.1f} / - | "
                         f"{a_own / b_own:.2f} / - | {a_own / limits_ms[protocol]:.2f} | - |")
    lines += ["", f"ratio = {ours} / {baseline} (< 1: {ours} is faster), of the medians and of the worst calls; "
              "limit = the copy limit of forward + backward above (of the MMD alone: the layer's own traffic is "
              "not in it), accumulated: with the sum into the kept gradient (both read, one written); "
              "\"less the layer alone\": the medians less the layer's own forward and backward, timed in the "
              "same rounds."]
    return "\n".join(lines)
