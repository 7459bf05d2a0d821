"""Benchmark of the compiled kernels against the strongest baselines we can run, in three sections.

Section "mmd": `imm_ext.mmd_loss` against PyTorch and GeomLoss/KeOps formulations of the same MMD.
For each case (IMM's per-group MMD on pixel and latent shapes, and large point sets) and each method
it measures, for the forward (under torch.no_grad) and for forward + backward (loss.backward() from
fresh leaf tensors, gradients reset between calls):
  * the median wall time in ms of calls timed in interleaved rounds (one call of every method and
    mode per round, in every section), after two untimed calls of each: a warm-up (which includes
    any compilation: torch.compile, KeOps) and one that measures memory. Interleaving gives every
    method the same load on a shared machine and the same allocator state (glibc's thresholds rise
    with the largest block freed so far, so a method timed alone first pays page faults that the
    ones after it do not);
  * the ratio imm_ext time / this row's time (imm_ext row: imm_ext / best baseline, marked *);
  * "peak extra MB", during that untimed memory call: on CPU the peak growth of the process's
    anonymous resident memory (/proc/self/statm resident - shared, sampled every ms in a background
    thread); on CUDA torch.cuda.max_memory_allocated minus the memory allocated before the call.
Methods: imm_ext (the compiled kernels), eager (imm_ext.ops.mmd_loss_reference), compile
(torch.compile of that reference, dynamic=False), cdist (a torch.cdist formulation), and GeomLoss
SamplesLoss with the tensorized and online (KeOps) backends (set cases only: GeomLoss takes one
scalar blur, so IMM's per-group bandwidths cannot be expressed). IMM cases add a "copy limit" row:
the memory-traffic lower bound at the bandwidth of dst.copy_(src) measured in the same run, and a second
table that times imm_ext against torch.compile under each gradient protocol (fresh, accumulated, after a
large eager temporary; bench/gradient_protocols.py) in shared interleaved rounds, with page faults per call.
Section "attention": cases attn-* (DiT-S/2 and DiT-XL/2 head shapes at 256 tokens, float32 and
bfloat16, and 1024 tokens) time loss = sum(attention(q, k, v) * w) with methods imm_ext, sdpa-flash and sdpa-math
(torch.nn.functional.scaled_dot_product_attention restricted to one backend), eager
(softmax(q k^T / sqrt(Dh)) v) and compile (torch.compile of eager); each row adds its GFLOP/s, and a
"matmul limit" row gives the FLOPs at the rate torch.matmul reaches on the case's own Q K^T product.
The matmul of the limit row is timed in the same rounds as the attention calls.
Methods that need too much memory are skipped with a note. In sets-100k each method is first timed
at N = M = 10,000, and a baseline predicted (by N*M scaling) to exceed --max-call-s per call is
skipped. A method that fails is reported with its error and the run goes on.

Section "block": the DiT block's fused per-token ops (`imm_ext.ops.norm_modulate`,
`gate_residual`, `timestep_embedding_pair`) on DiT-S/2 and DiT-XL/2 token shapes (float32), and the
MLP's activation `imm_ext.ops.gelu_tanh` on DiT-S/2's hidden layer (case dit-s2-mlp), and qk-norm
`imm_ext.ops.qk_norm` on DiT-S/2's qkv projection (case dit-s2-qk), measured the same way (forward +
backward: torch.autograd.backward of the outputs with fixed cotangents), against eager PyTorch as DiT
writes it (F.layer_norm(x) * (1 + scale[:, None]) + shift[:, None]; x + gate[:, None] * y; the
reference embeddings of imm_ext.ops; F.gelu(x, approximate="tanh"); F.rms_norm on the q and k views of
the projection) and torch.compile of the same.

Results are printed as markdown tables and written as JSON (with the machine description and load
average) to bench/results/kernels-<device>[-quick]-<timestamp>.json.

    python bench/kernels.py [--device cpu|cuda] [--quick] [--section all|mmd|block|attention]
        [--cases imm-pixel,sets-d3,dit-s2,attn-dit-s] [--out PATH] [--max-call-s 120]

--quick: fewer repetitions and no sets-100k or attn-1024 case (about 2-3 minutes on an idle 2-core
CPU; the full run takes about 10-15 minutes there, most of it in sets-100k).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import imm_ext
from imm_ext.ops import mmd_loss_reference, timestep_embedding_pair_reference
from imm_ext.process_memory import keep_freed_memory
from gradient_protocols import format_protocols, time_protocols
from harness import KEEP_FREED_MEMORY, load_average, machine_info, synchronize, time_in_rounds, timed

try:
    import geomloss
    GEOMLOSS_MISSING = None
except Exception as error:  # noqa: BLE001 - any import failure means "not available"
    geomloss, GEOMLOSS_MISSING = None, f"not installed: geomloss ({error})"
try:
    import pykeops
    KEOPS_MISSING = None
except Exception as error:  # noqa: BLE001
    pykeops, KEOPS_MISSING = None, f"not installed: pykeops ({error})"

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MEMORY_LIMIT_BYTES = 4e9  # skip a method whose largest materialised tensor would exceed this
FLOAT_BYTES = 4
METHODS = ("imm_ext", "eager", "compile", "cdist", "geomloss-tensorized", "geomloss-online")
COMPILING_METHODS = ("compile", "geomloss-online")  # their warm-up call compiles: noted in the table
GEOMLOSS_NAMES = {"laplace": "laplacian", "gaussian": "gaussian", "energy": "energy"}
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Skip(Exception):
    """A method that does not apply to a case; the message is the table note."""


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    groups: int  # 1 with batched=False: 2-D (N, D) inputs
    n: int
    m: int
    dim: int
    batched: bool
    y_requires_grad: bool
    imm: bool  # IMM loss: per-group bandwidths in [1, 100], distances scaled by 1/D, copy limit row
    kernel: str = "laplace"
    full_only: bool = False  # skipped under --quick
    probe_n: Optional[int] = None  # time each method at this N = M first; skip it if too slow

    @property
    def difference_bytes(self) -> float:
        return self.groups * self.n * self.m * self.dim * FLOAT_BYTES

    @property
    def matrix_bytes(self) -> float:
        return self.groups * self.n * self.m * FLOAT_BYTES


CASES = (
    Case("imm-pixel", "IMM pixel groups: G=1024, N=M=4, D=3072", 1024, 4, 4, 3072, True, False, True),
    Case("imm-latent", "IMM latent groups: G=1024, N=M=4, D=4096", 1024, 4, 4, 4096, True, False, True),
    Case("sets-d3", "sets D=3: N=M=4096", 1, 4096, 4096, 3, False, True, False),
    Case("sets-d64", "sets D=64: N=M=4096", 1, 4096, 4096, 64, False, True, False),
    Case("sets-100k", "sets N=100k D=3: N=M=100,000", 1, 100_000, 100_000, 3, False, True, False,
         full_only=True, probe_n=10_000),
)


@dataclass(frozen=True)
class Timing:
    max_reps: int
    budget_s: float  # stop repeating once this much time was spent (after at least one timed call)


FULL = Timing(max_reps=25, budget_s=5.0)
QUICK = Timing(max_reps=5, budget_s=0.5)


@dataclass
class Measurement:
    ms: float  # median
    worst_ms: float
    reps: int
    warmup_s: Optional[float]  # the untimed warm-up call; None where a probe did the warm-up
    peak_extra_mb: float
    loss: Optional[float]  # the value of a scalar output (the MMD cases), else None


@dataclass
class MethodResult:
    method: str
    forward: Optional[Measurement] = None
    forward_backward: Optional[Measurement] = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Inputs and loss options

def make_inputs(case: Case, device: str, n: Optional[int] = None, m: Optional[int] = None):
    """Seeded x, y (fresh leaves) and the mmd_loss keyword options of the case."""
    n, m = n or case.n, m or case.m
    torch.manual_seed(0)
    shape_x, shape_y = ((case.groups, n, case.dim), (case.groups, m, case.dim)) if case.batched \
        else ((n, case.dim), (m, case.dim))
    x = torch.randn(shape_x, device=device).requires_grad_()
    y = torch.randn(shape_y, device=device).requires_grad_(case.y_requires_grad)
    if case.imm:
        bandwidth = torch.empty(case.groups, device=device).uniform_(1.0, 100.0)
        options = dict(kernel=case.kernel, bandwidth=bandwidth, distance_scale="dim")
    else:
        options = dict(kernel=case.kernel, bandwidth=1.0, distance_scale=None)
    return x, y, dict(options, estimator="biased", reduction="mean")


def scale_of(options: dict, dim: int) -> float:
    return 1.0 / dim if options["distance_scale"] == "dim" else 1.0


# ---------------------------------------------------------------------------------------------
# Methods: each builder returns loss(x, y) for the case, or raises Skip

def require_memory(nbytes: float, what: str) -> None:
    if nbytes > MEMORY_LIMIT_BYTES:
        raise Skip(f"skipped: needs {what} memory ({nbytes / 1e9:.1f} GB)")


def build_imm_ext(case: Case, options: dict) -> Loss:
    return lambda x, y: imm_ext.mmd_loss(x, y, **options)


def build_eager(case: Case, options: dict) -> Loss:
    require_memory(case.difference_bytes, "(G,N,M,D)")
    return lambda x, y: mmd_loss_reference(x, y, **options)


def build_compile(case: Case, options: dict) -> Loss:
    require_memory(case.matrix_bytes, "N*M")
    torch._dynamo.reset()
    compiled = torch.compile(mmd_loss_reference, dynamic=False)
    return lambda x, y: compiled(x, y, **options)


def cdist_kernel(d: torch.Tensor, h, kernel: str) -> torch.Tensor:
    if kernel == "laplace":
        return torch.exp(-d / h)
    if kernel == "gaussian":
        return torch.exp(-0.5 * (d / h) ** 2)
    if kernel == "energy":
        return -d
    raise Skip(f"n/a: no cdist formulation for kernel {kernel!r}")


def build_cdist(case: Case, options: dict) -> Loss:
    """Biased squared MMD from three torch.cdist kernel matrices; per-group h broadcast as (G,1,1)."""
    require_memory(case.matrix_bytes, "N*M")
    h, kernel, scale = options["bandwidth"], options["kernel"], scale_of(options, case.dim)
    if isinstance(h, torch.Tensor):
        h = h.view(-1, 1, 1)

    def block_mean(a, b):
        return cdist_kernel(torch.cdist(a, b) * scale, h, kernel).mean((-2, -1))

    return lambda x, y: (block_mean(x, x) + block_mean(y, y) - 2 * block_mean(x, y)).mean()


def geomloss_builder(backend: str) -> Callable[[Case, dict], Loss]:
    def build(case: Case, options: dict) -> Loss:
        if case.imm:
            raise Skip("n/a: per-group bandwidths are not expressible (GeomLoss takes one scalar blur)")
        if GEOMLOSS_MISSING:
            raise Skip(GEOMLOSS_MISSING)
        if backend == "online" and KEOPS_MISSING:
            raise Skip(KEOPS_MISSING)
        if backend == "tensorized":
            require_memory(case.matrix_bytes, "N*M")
        kernel, scale = options["kernel"], scale_of(options, case.dim)
        if kernel not in GEOMLOSS_NAMES or scale != 1.0:
            raise Skip(f"n/a: kernel {kernel!r} with distance scale {scale:g}")
        loss = geomloss.SamplesLoss(loss=GEOMLOSS_NAMES[kernel], blur=options["bandwidth"], backend=backend)
        return lambda x, y: 2 * loss(x, y)  # SamplesLoss returns half the squared MMD

    return build


BUILDERS = {
    "imm_ext": build_imm_ext,
    "eager": build_eager,
    "compile": build_compile,
    "cdist": build_cdist,
    "geomloss-tensorized": geomloss_builder("tensorized"),
    "geomloss-online": geomloss_builder("online"),
}


# ---------------------------------------------------------------------------------------------
# Timing and memory

def rounds(calls: dict, device: str, timing: Timing) -> dict:
    """{key: RoundTimes} of {key: (call, reset)}, timed in rounds (harness.py) as `timing` says."""
    return time_in_rounds(calls, device, timing.max_reps, timing.budget_s)


def prepared_calls(result: MethodResult, workloads: Callable[[str], tuple], device: str,
                   warm_up: bool = True) -> dict:
    """{mode: (call, reset)} of one method, workloads(mode) giving each, after each mode's untimed
    warm-up and memory calls (their measurements set on result, times to come from interleaved
    rounds); a mode that fails is noted on result, never fatal. The warm-up keeps one-time work out
    of the memory call and the timed ones: compilation (torch.compile, KeOps) and lazy imports (the
    first call of a torch.library custom op imports torch._dynamo: ~70 MB of Python objects);
    warm_up=False where a probe has done it."""
    calls = {}
    for mode in ("forward", "forward_backward"):
        try:
            call, reset = workloads(mode)
            reset()
            warmup_s = timed(call, device) if warm_up else None
            reset()
            peak_mb, value = memory_call(call, device)
            setattr(result, mode, Measurement(float("nan"), float("nan"), 0, warmup_s, peak_mb, value))
            calls[mode] = (call, reset)
        except Exception as error:  # noqa: BLE001 - a failing method is reported, never fatal
            result.notes.append(f"{mode}: {error_note(error)}")
    return calls


def time_prepared(prepared: list, device: str, timing: Timing, extra: Optional[dict] = None) -> dict:
    """Times [(result, {mode: (call, reset)})] from prepared_calls, and any `extra` calls {key: (call,
    reset)}, in the same interleaved rounds; sets each result's times and returns every call's."""
    calls = {(result.method, mode): call for result, method_calls in prepared for mode, call in method_calls.items()}
    times = rounds({**calls, **(extra or {})}, device, timing)
    for result, method_calls in prepared:
        for mode in method_calls:
            measured, timed_mode = getattr(result, mode), times[(result.method, mode)]
            measured.ms, measured.worst_ms, measured.reps = timed_mode.median_ms, timed_mode.worst_ms, timed_mode.count
    return times


# The tables' note on how their times were taken.
ROUNDS_NOTE = ("ms = median of calls timed in interleaved rounds (one call of every method per round) after "
               "untimed warm-up and memory calls.")


def rss_bytes() -> int:
    """Resident anonymous memory (statm resident - shared): file-backed pages, such as library code
    touched for the first time, are left out."""
    with open("/proc/self/statm") as statm:
        resident, shared = map(int, statm.read().split()[1:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS so that RSS growth reflects the next call."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def scalar_value(out) -> Optional[float]:
    return float(out.detach()) if isinstance(out, torch.Tensor) and out.numel() == 1 else None


def memory_call(fn: Callable[[], object], device: str) -> tuple:
    """One untimed call: (peak extra MB during it, its output's value if a scalar, else None)."""
    if device == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20, scalar_value(out)
    release_free_memory()
    before = peak = rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak, rss_bytes()) - before) / 2**20, scalar_value(out)


def workload(loss: Callable[..., torch.Tensor], inputs: tuple, mode: str):
    """(call, reset) of loss(*inputs) for one mode: forward under no_grad, or forward + backward."""
    if mode == "forward":
        def call():
            with torch.no_grad():
                return loss(*inputs)
        return call, lambda: None

    def reset():
        for leaf in inputs:
            leaf.grad = None

    def call():
        out = loss(*inputs)
        out.backward()
        return out
    return call, reset


def probe_call_s(loss: Loss, case: Case, device: str) -> float:
    """Seconds of one forward + backward at N = M = case.probe_n, scaled by N*M to the full case.
    Its untimed first calls build the code of both modes (the warm-up of the full-size runs)."""
    x, y, _ = make_inputs(case, device, case.probe_n, case.probe_n)
    for mode in ("forward", "forward_backward"):
        call, reset = workload(loss, (x, y), mode)
        reset()
        call()
    reset()
    return timed(call, device) * (case.n * case.m) / case.probe_n**2


def prepare_method(method: str, case: Case, device: str, max_call_s: float) -> tuple:
    """(result, {mode: (call, reset)}) of one MMD method after its untimed warm-up (or probe) and
    memory calls; a skipped or failing method has no calls."""
    result = MethodResult(method)
    try:
        x, y, options = make_inputs(case, device)
        loss = BUILDERS[method](case, options)
        if case.probe_n:
            estimate = probe_call_s(loss, case, device)
            if method != "imm_ext" and estimate > max_call_s:
                raise Skip(f"skipped: a fwd+bwd call would take ~{estimate:.0f} s (timed at N=M="
                           f"{case.probe_n:,}, scaled by N*M) > --max-call-s {max_call_s:g}")
    except Skip as skip:
        result.notes.append(str(skip))
        return result, {}
    except Exception as error:  # noqa: BLE001 - a failing method is reported, never fatal
        result.notes.append(error_note(error))
        return result, {}
    calls = prepared_calls(result, lambda mode: workload(loss, (x, y), mode), device, warm_up=not case.probe_n)
    if method in COMPILING_METHODS:
        note_first_calls(result)
    return result, calls


def run_mmd_case(case: Case, device: str, timing: Timing, max_call_s: float) -> list:
    """Every method of one MMD case, timed in interleaved rounds (one call of every method and mode per
    round) after each one's warm-up and memory calls."""
    prepared = [prepare_method(method, case, device, max_call_s) for method in METHODS]
    time_prepared(prepared, device, timing)
    return [result for result, _ in prepared]


def note_first_calls(result: MethodResult) -> None:
    measured = (result.forward, result.forward_backward)
    firsts = [f"{m.warmup_s:.1f} s" for m in measured if m and m.warmup_s]
    if firsts:
        result.notes.append(f"first call fwd / fwd+bwd {' / '.join(firsts)} (not timed; includes any compilation)")


def error_note(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"error: {type(error).__name__}: {text[:300]}"


def check_agreement(results: list) -> None:
    """Note any method whose loss differs from imm_ext's beyond float32 accumulation error (the
    kernel-block means are O(1); their difference, the loss, is small)."""
    reference = next((r.forward for r in results if r.method == "imm_ext"), None)
    if reference is None:
        return
    for result in results:
        value = result.forward.loss if result.forward else None
        if result.method != "imm_ext" and value is not None and not math.isclose(
                value, reference.loss, rel_tol=1e-3, abs_tol=1e-6):
            result.notes.append(f"loss {value:.6g} differs from imm_ext {reference.loss:.6g}")


# ---------------------------------------------------------------------------------------------
# Copy limit (IMM cases)

def copy_limit(case: Case, device: str, timing: Timing) -> dict:
    """Memory-traffic limit: fwd reads x and y once; fwd+bwd reads them twice and writes grad x; adding the
    new gradient into a kept x.grad (autograd's accumulation, the same for every method) reads both and
    writes the sum."""
    x, y, _ = make_inputs(case, device)
    src, dst = torch.randn_like(x.detach()), torch.empty_like(x.detach())
    dst.copy_(src)
    copy_ms = rounds({"copy": (lambda: dst.copy_(src), lambda: None)}, device, timing)["copy"].median_ms
    bytes_x, bytes_y = x.numel() * x.element_size(), y.numel() * y.element_size()
    bandwidth = 2 * bytes_x / (copy_ms / 1e3)
    return dict(copy_ms=copy_ms, bandwidth_gb_s=bandwidth / 1e9,
                forward_ms=(bytes_x + bytes_y) / bandwidth * 1e3,
                forward_backward_ms=(2 * (bytes_x + bytes_y) + bytes_x) / bandwidth * 1e3,
                accumulate_ms=3 * bytes_x / bandwidth * 1e3)


def run_protocols(case: Case, device: str, timing: Timing, limit: dict) -> dict:
    """imm_ext against torch.compile of the reference (the best baseline of the IMM cases) under every
    gradient protocol (gradient_protocols.py), printed as a table."""
    options = make_inputs(case, device)[2]
    losses = {method: BUILDERS[method](case, options) for method in ("imm_ext", "compile")}
    results = time_protocols(losses, lambda: make_inputs(case, device)[:2], device, timing.max_reps,
                             timing.budget_s, int(case.difference_bytes))
    limits = {protocol: limit["forward_backward_ms"] for protocol in results}
    limits["accumulated"] += limit["accumulate_ms"]
    print("\n" + format_protocols(case.title, results, "imm_ext", "compile", limits),
          flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Block section: the DiT block's fused per-token ops

@dataclass(frozen=True)
class BlockCase:
    key: str
    title: str
    shape: tuple  # x (B, T, C)
    ops: tuple = ("norm_modulate", "gate_residual", "timestep_embedding_pair")


BLOCK_CASES = (
    BlockCase("dit-s2", "DiT-S/2 block: x (8, 256, 384) float32", (8, 256, 384)),
    BlockCase("dit-xl2", "DiT-XL/2 width: x (32, 256, 1152) float32", (32, 256, 1152)),
    BlockCase("dit-s2-mlp", "DiT-S/2 MLP hidden layer: x (8, 256, 1536) float32", (8, 256, 1536),
                     ("gelu_tanh",)),
    BlockCase("dit-s2-qk", "DiT-S/2 attention qk-norm: qkv (8, 256, 3 x 384) float32, 6 heads of 64",
                     (8, 256, 384), ("qk_norm",)),
)
QK_HEAD_DIM = 64
BLOCK_METHODS = ("imm_ext", "eager", "compile")
EMBEDDING_DIM = 256  # DiT's frequency embedding size


def eager_norm_modulate(x, shift, scale):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def eager_gate_residual(x, gate, y):
    return x + gate[:, None] * y


def eager_gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def eager_qk_norm(qkv, q_weight, k_weight):
    """torch's rms_norm on the q and k views of the projection, as a DiT without imm_ext writes it."""
    batch, tokens, width = qkv.shape
    heads = width // (3 * QK_HEAD_DIM)
    q, k, _ = qkv.view(batch, tokens, 3, heads, QK_HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
    return (F.rms_norm(q, (QK_HEAD_DIM,), q_weight, 1e-6), F.rms_norm(k, (QK_HEAD_DIM,), k_weight, 1e-6))


def block_problem(op: str, case: BlockCase, device: str):
    """Seeded inputs (fresh leaves), cotangents of the outputs, and the eager and fused callables."""
    torch.manual_seed(0)
    b, t, c = case.shape
    leaf = lambda *shape: torch.randn(shape, device=device).requires_grad_()
    if op == "norm_modulate":
        return ((leaf(b, t, c), leaf(b, c), leaf(b, c)), (torch.randn(b, t, c, device=device),),
                eager_norm_modulate, imm_ext.ops.norm_modulate)
    if op == "gate_residual":
        return ((leaf(b, t, c), leaf(b, c), leaf(b, t, c)), (torch.randn(b, t, c, device=device),),
                eager_gate_residual, imm_ext.ops.gate_residual)
    if op == "gelu_tanh":
        return (leaf(b, t, c),), (torch.randn(b, t, c, device=device),), eager_gelu_tanh, imm_ext.ops.gelu_tanh
    if op == "qk_norm":
        heads = c // QK_HEAD_DIM
        head = lambda: torch.randn(b, heads, t, QK_HEAD_DIM, device=device)
        return ((leaf(b, t, 3 * c), leaf(QK_HEAD_DIM), leaf(QK_HEAD_DIM)), (head(), head()), eager_qk_norm,
                lambda qkv, qw, kw: imm_ext.ops.qk_norm(qkv, qw, kw, heads))
    times = (1000 * torch.rand(b, device=device, dtype=torch.float64)).requires_grad_()
    return ((times, times.detach().clone().requires_grad_()),
            tuple(torch.randn(b, EMBEDDING_DIM, device=device) for _ in range(2)),
            lambda c_t, c_s: timestep_embedding_pair_reference(c_t, c_s, EMBEDDING_DIM),
            lambda c_t, c_s: imm_ext.ops.timestep_embedding_pair(c_t, c_s, EMBEDDING_DIM))


def block_workload(fn, inputs, cotangents, mode: str):
    """(call, reset) for one mode: forward under no_grad, or forward + backward of every output."""
    if mode == "forward":
        def call():
            with torch.no_grad():
                return fn(*inputs)
        return call, lambda: None

    def reset():
        for t in inputs:
            t.grad = None

    def call():
        out = fn(*inputs)
        torch.autograd.backward(out if isinstance(out, tuple) else (out,), cotangents)
        return out
    return call, reset


def outputs_differ(fn, reference, inputs) -> Optional[str]:
    """A note when fn's forward outputs differ from reference's beyond float32 rounding."""
    with torch.no_grad():
        got, want = fn(*inputs), reference(*inputs)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    error = max(float((a.double() - b.double()).abs().max()) for a, b in zip(got, want))
    return f"max |difference| from imm_ext {error:.2g}" if error > 1e-4 else None


def run_block(op: str, case: BlockCase, device: str, timing: Timing) -> list:
    """Every method of one op, each after its warm-up and memory calls, timed in interleaved rounds
    (one call of every method and mode per round): all meet the same allocator state, whichever
    comes first (glibc's thresholds rise with the largest block freed so far)."""
    inputs, cotangents, eager, fused = block_problem(op, case, device)
    torch._dynamo.reset()
    methods = {"imm_ext": fused, "eager": eager, "compile": torch.compile(eager, dynamic=False)}
    prepared = []
    for method in BLOCK_METHODS:
        result, fn = MethodResult(method), methods[method]
        prepared.append((result, prepared_calls(result, lambda mode: block_workload(fn, inputs, cotangents, mode),
                                                device)))
        if method != "imm_ext" and result.forward:
            note = outputs_differ(fn, fused, inputs)
            if note:
                result.notes.append(note)
        if method in COMPILING_METHODS:
            note_first_calls(result)
    time_prepared(prepared, device, timing)
    return [result for result, _ in prepared]


# ---------------------------------------------------------------------------------------------
# Attention cases: imm_ext.ops.attention against scaled_dot_product_attention and eager softmax

@dataclass(frozen=True)
class AttentionCase:
    key: str
    title: str
    batch: int
    heads: int
    seq: int
    head_dim: int
    dtype: str = "float32"
    full_only: bool = False

    @property
    def flops(self) -> float:
        """Forward FLOPs: Q K^T and P V, 2 * B * H * T^2 * Dh each (the backward does 2.5 times this)."""
        return 4.0 * self.batch * self.heads * self.seq**2 * self.head_dim

    @property
    def matrix_bytes(self) -> float:
        return self.batch * self.heads * self.seq**2 * getattr(torch, self.dtype).itemsize


ATTENTION_CASES = (
    AttentionCase("attn-dit-s", "attention, DiT-S/2 at 256 tokens: B=8, H=6, T=256, Dh=64", 8, 6, 256, 64),
    AttentionCase("attn-dit-xl", "attention, DiT-XL/2 at 256 tokens: B=2, H=16, T=256, Dh=72", 2, 16, 256, 72),
    AttentionCase("attn-dit-s-bf16", "attention, DiT-S/2 at 256 tokens, bfloat16: B=8, H=6, T=256, Dh=64",
                  8, 6, 256, 64, "bfloat16"),
    AttentionCase("attn-1024", "attention, 1024 tokens: B=1, H=6, T=1024, Dh=64", 1, 6, 1024, 64, full_only=True),
)
ATTENTION_METHODS = ("imm_ext", "sdpa-flash", "sdpa-math", "eager", "compile")
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_attention_inputs(case: AttentionCase, device: str):
    """Seeded q, k, v (fresh leaves, (B, H, T, Dh)) and a fixed output weight w: the timed loss is
    sum(attention(q, k, v) * w), so that the backward starts from a dense random gradient."""
    torch.manual_seed(0)
    shape, dtype = (case.batch, case.heads, case.seq, case.head_dim), getattr(torch, case.dtype)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_() for _ in range(3))
    return (q, k, v), torch.randn(shape, device=device, dtype=dtype)


def eager_attention(q, k, v):
    return torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ v


def sdpa_builder(backend: str) -> Callable[[AttentionCase], Attend]:
    def build(case: AttentionCase) -> Attend:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = getattr(SDPBackend, backend)

        def attend(q, k, v):
            with sdpa_kernel(chosen):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return attend

    return build


def build_eager_attention(case: AttentionCase) -> Attend:
    require_memory(3 * case.matrix_bytes, "T x T")
    return eager_attention


def build_compiled_attention(case: AttentionCase) -> Attend:
    require_memory(3 * case.matrix_bytes, "T x T")
    torch._dynamo.reset()
    return torch.compile(eager_attention, dynamic=False)


ATTENTION_BUILDERS = {
    "imm_ext": lambda case: imm_ext.ops.attention,
    "sdpa-flash": sdpa_builder("FLASH_ATTENTION"),
    "sdpa-math": sdpa_builder("MATH"),
    "eager": build_eager_attention,
    "compile": build_compiled_attention,
}


def prepare_attention_method(method: str, case: AttentionCase, device: str) -> tuple:
    """(result, {mode: (call, reset)}) of one method after its untimed warm-up and memory calls."""
    result = MethodResult(method)
    try:
        inputs, weight = make_attention_inputs(case, device)
        attend = ATTENTION_BUILDERS[method](case)
    except Skip as skip:
        result.notes.append(str(skip))
        return result, {}
    loss = lambda q, k, v: (attend(q, k, v) * weight).sum()
    calls = prepared_calls(result, lambda mode: workload(loss, inputs, mode), device)
    if method == "compile" and result.forward and result.forward_backward:
        result.notes.append(f"first call fwd / fwd+bwd {result.forward.warmup_s:.1f} s / "
                            f"{result.forward_backward.warmup_s:.1f} s (not timed; includes compilation)")
    return result, calls


def check_attention_agreement(case: AttentionCase, results: list) -> None:
    """Note a method whose loss sum(out * w) differs from imm_ext's beyond rounding: the sum of
    B*H*T*Dh products of O(1) terms, compared with a tolerance that grows like its square root."""
    reference = next((r.forward for r in results if r.method == "imm_ext"), None)
    if reference is None:
        return
    relative = 1e-3 if case.dtype == "float32" else 2e-2
    scale = math.sqrt(case.batch * case.heads * case.seq * case.head_dim)
    for result in results:
        value = result.forward.loss if result.forward else None
        if result.method != "imm_ext" and value is not None and not math.isclose(
                value, reference.loss, rel_tol=relative, abs_tol=relative * scale):
            result.notes.append(f"loss {value:.6g} differs from imm_ext {reference.loss:.6g}")


def matmul_call(case: AttentionCase, device: str) -> Callable[[], torch.Tensor]:
    """torch.matmul of the case's own Q K^T product, (B*H, T, Dh) @ (B*H, Dh, T): the compute limit
    is the case's FLOPs at its rate (the backward does 2.5 times the forward's FLOPs)."""
    (q, k, _), _ = make_attention_inputs(case, device)
    a = q.detach().flatten(0, 1)
    b = k.detach().flatten(0, 1).transpose(1, 2).contiguous()
    torch.matmul(a, b)
    return lambda: torch.matmul(a, b)


def matmul_limit(case: AttentionCase, matmul_ms: float) -> dict:
    rate = case.flops / 2 / (matmul_ms / 1e3)
    return dict(matmul_ms=matmul_ms, gflop_s=rate / 1e9, forward_ms=case.flops / rate * 1e3,
                forward_backward_ms=3.5 * case.flops / rate * 1e3)


def format_attention_table(case: AttentionCase, results: list, limit: dict) -> str:
    header = ("| method | fwd ms | fwd ratio | fwd GFLOP/s | fwd peak extra MB | fwd+bwd ms | fwd+bwd ratio "
              "| fwd+bwd GFLOP/s | fwd+bwd peak extra MB | notes |")
    lines = [f"### {case.title} ({case.dtype})", "", header, "|" + "---|" * 10]
    imm = next((r for r in results if r.method == "imm_ext"), None)
    bests = {mode: best_baseline(results, mode) for mode in ("forward", "forward_backward")}
    flops = {"forward": case.flops, "forward_backward": 3.5 * case.flops}
    for result in results:
        cells = [result.method]
        for mode in ("forward", "forward_backward"):
            ms_cell, ratio, peak = mode_cells(result, mode, getattr(imm, mode) if imm else None, bests[mode])
            m = getattr(result, mode)
            cells += [ms_cell, ratio, f"{flops[mode] / m.ms / 1e6:.1f}" if m else "-", peak]
        lines.append("| " + " | ".join(cells + ["; ".join(result.notes)]) + " |")
    cells = ["matmul limit"]
    for mode in ("forward", "forward_backward"):
        imm_m = getattr(imm, mode) if imm else None
        cells += [format_ms(limit[mode + "_ms"]), f"{imm_m.ms / limit[mode + '_ms']:.2f}" if imm_m else "-",
                  f"{limit['gflop_s']:.1f}", "-"]
    lines.append("| " + " | ".join(cells) + f" | torch.matmul of the case's Q K^T, (B*H, T, Dh) @ (B*H, Dh, T): "
                 f"{limit['matmul_ms']:.3f} ms; FLOPs fwd 4*B*H*T^2*Dh, fwd+bwd 3.5 times that |")
    lines += ["", "ratio = imm_ext time / this row's time (< 1: imm_ext is faster); imm_ext row: imm_ext "
              "time / best baseline (* = best baseline); matmul limit row: imm_ext time / the FLOPs at "
              "torch.matmul's rate. Loss = sum(attention(q, k, v) * w); fwd under no_grad (imm_ext keeps "
              "no log-sum-exp there). " + ROUNDS_NOTE]
    return "\n".join(lines)


def run_attention_case(case: AttentionCase, device: str, timing: Timing) -> dict:
    prepared = [prepare_attention_method(method, case, device) for method in ATTENTION_METHODS]
    medians = time_prepared(prepared, device, timing, {("matmul", "limit"): (matmul_call(case, device), lambda: None)})
    results = [result for result, _ in prepared]
    check_attention_agreement(case, results)
    limit = matmul_limit(case, medians[("matmul", "limit")].median_ms)
    print("\n" + format_attention_table(case, results, limit), flush=True)
    return dict(key=case.key, title=case.title, case=asdict(case), matmul_limit=limit,
                best_baseline={mode: getattr(best_baseline(results, mode), "method", None)
                               for mode in ("forward", "forward_backward")},
                results=[asdict(r) for r in results])


# ---------------------------------------------------------------------------------------------
# Report

def best_baseline(results: list, mode: str) -> Optional[MethodResult]:
    timed_baselines = [r for r in results if r.method != "imm_ext" and getattr(r, mode)]
    return min(timed_baselines, key=lambda r: getattr(r, mode).ms, default=None)


def format_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def mode_cells(result: MethodResult, mode: str, imm: Optional[Measurement], best) -> list:
    m = getattr(result, mode)
    if m is None:
        return ["-", "-", "-"]
    star = " *" if result is best else ""
    if result.method == "imm_ext":
        ratio = f"{m.ms / getattr(best, mode).ms:.2f}" if best else "-"
    else:
        ratio = f"{imm.ms / m.ms:.2f}" if imm else "-"
    return [format_ms(m.ms) + star, ratio, f"{m.peak_extra_mb:.0f}"]


def format_table(case: Case, results: list, limit: Optional[dict]) -> str:
    header = ("| method | fwd ms | fwd ratio | fwd peak extra MB | fwd+bwd ms | fwd+bwd ratio "
              "| fwd+bwd peak extra MB | notes |")
    lines = [f"### {case.title} ({case.kernel}, y requires grad: {case.y_requires_grad})", "",
             header, "|" + "---|" * 8]
    imm = next((r for r in results if r.method == "imm_ext"), None)
    bests = {mode: best_baseline(results, mode) for mode in ("forward", "forward_backward")}
    for result in results:
        cells = [result.method]
        for mode in ("forward", "forward_backward"):
            cells += mode_cells(result, mode, getattr(imm, mode) if imm else None, bests[mode])
        lines.append("| " + " | ".join(cells + ["; ".join(result.notes)]) + " |")
    if limit:
        cells = ["copy limit"]
        for mode in ("forward", "forward_backward"):
            imm_m = getattr(imm, mode) if imm else None
            ratio = f"{imm_m.ms / limit[mode + '_ms']:.2f}" if imm_m else "-"
            cells += [format_ms(limit[mode + "_ms"]), ratio, "-"]
        lines.append("| " + " | ".join(cells) + f" | copy bandwidth {limit['bandwidth_gb_s']:.1f} GB/s "
                     "(dst.copy_(src) of x); fwd: 1 read of x, y; "
                     "fwd+bwd: 2 reads of x, y + 1 write of grad x |")
    lines += ["", "ratio = imm_ext time / this row's time (< 1: imm_ext is faster); imm_ext row: imm_ext "
              "time / best baseline (* = best baseline, fastest non-imm_ext method); copy limit row: "
              "imm_ext time / memory-traffic limit. " + ROUNDS_NOTE]
    return "\n".join(lines)


def format_block_table(case: BlockCase, per_op: dict) -> str:
    header = ("| op | method | fwd ms | fwd ratio | fwd peak extra MB | fwd+bwd ms | fwd+bwd ratio "
              "| fwd+bwd peak extra MB | notes |")
    lines = [f"### {case.title}", "", header, "|" + "---|" * 9]
    for op, results in per_op.items():
        imm = next((r for r in results if r.method == "imm_ext"), None)
        bests = {mode: best_baseline(results, mode) for mode in ("forward", "forward_backward")}
        for result in results:
            cells = [op, result.method]
            for mode in ("forward", "forward_backward"):
                cells += mode_cells(result, mode, getattr(imm, mode) if imm else None, bests[mode])
            lines.append("| " + " | ".join(cells + ["; ".join(result.notes)]) + " |")
    lines += ["", "ratio = imm_ext time / this row's time (< 1: imm_ext is faster); imm_ext row: imm_ext "
              "time / best baseline (* = best baseline). eager = PyTorch as DiT writes it; compile = "
              "torch.compile of eager. fwd+bwd: backward of every output with fixed cotangents. " + ROUNDS_NOTE]
    return "\n".join(lines)


def machine_info_with_baselines(device: str) -> dict:
    return dict(machine_info(device), geomloss=geomloss.__version__ if geomloss else GEOMLOSS_MISSING,
                pykeops=pykeops.__version__ if pykeops else KEOPS_MISSING)


def machine_line(info: dict) -> str:
    where = f"GPU {info['gpu']}, " if info["gpu"] else ""
    return (f"machine: {where}CPU {info['cpu']}, {info['torch_threads']} torch threads "
            f"({info['cpu_count']} CPUs) | torch {info['torch']} | imm_ext {info['imm_ext']} "
            f"{info['build_info']} | geomloss {info['geomloss']} | pykeops {info['pykeops']} "
            f"| load average {info['load_average_at_start']}")


# ---------------------------------------------------------------------------------------------
# Main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no sets-100k, no attn-1024")
    parser.add_argument("--section", choices=("all", "mmd", "block", "attention"), default="all",
                        help="mmd: imm_ext.mmd_loss; block: the DiT block's fused per-token ops; "
                             "attention: imm_ext.ops.attention (default: all three)")
    parser.add_argument("--cases", help="comma-separated subset of: " + ", ".join(
        c.key for c in CASES + ATTENTION_CASES + BLOCK_CASES))
    parser.add_argument("--out", type=Path,
                        help="JSON path (default bench/results/kernels-<device>[-quick]-<time>.json)")
    parser.add_argument("--keep-freed-memory", action="store_true", help=KEEP_FREED_MEMORY)
    parser.add_argument("--max-call-s", type=float, default=120.0,
                        help="in cases with a probe (sets-100k), skip a baseline whose estimated "
                             "fwd+bwd call takes longer (default 120; imm_ext always runs)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "--device cuda: no CUDA GPU is available to torch "
                       "(torch.cuda.is_available() is False)\n")
    keys = [c.key for c in CASES + ATTENTION_CASES + BLOCK_CASES]
    args.case_keys = args.cases.split(",") if args.cases else keys
    unknown = set(args.case_keys) - set(keys)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(keys)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    timing = QUICK if args.quick else FULL
    if args.keep_freed_memory:
        keep_freed_memory()
    info = machine_info_with_baselines(args.device)
    print(machine_line(info), flush=True)
    report = dict(machine=info, quick=args.quick, keep_freed_memory=args.keep_freed_memory,
                  started=datetime.now().isoformat(timespec="seconds"), cases=[], block=[])
    for case in CASES + ATTENTION_CASES:
        section = "attention" if isinstance(case, AttentionCase) else "mmd"
        if args.section not in ("all", section) or case.key not in args.case_keys:
            continue
        if args.quick and case.full_only:
            print(f"\n### {case.title}: skipped under --quick", flush=True)
            continue
        if isinstance(case, AttentionCase):
            report["cases"].append(run_attention_case(case, args.device, timing))
            continue
        results = run_mmd_case(case, args.device, timing, args.max_call_s)
        check_agreement(results)
        limit = copy_limit(case, args.device, timing) if case.imm else None
        print("\n" + format_table(case, results, limit), flush=True)
        protocols = run_protocols(case, args.device, timing, limit) if case.imm else None
        report["cases"].append(dict(key=case.key, title=case.title, case=asdict(case), copy_limit=limit,
                                    gradient_protocols=protocols,
                                    best_baseline={mode: getattr(best_baseline(results, mode), "method", None)
                                                   for mode in ("forward", "forward_backward")},
                                    results=[asdict(r) for r in results]))
    for case in BLOCK_CASES:
        if args.section not in ("all", "block") or case.key not in args.case_keys:
            continue
        per_op = {op: run_block(op, case, args.device, timing) for op in case.ops}
        print("\n" + format_block_table(case, per_op), flush=True)
        report["block"].append(dict(
            key=case.key, title=case.title, shape=case.shape,
            ops=[dict(op=op, best_baseline={mode: getattr(best_baseline(results, mode), "method", None)
                                            for mode in ("forward", "forward_backward")},
                      results=[asdict(r) for r in results]) for op, results in per_op.items()]))
    report["load_average_at_end"] = load_average()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS_DIR / f"kernels-{args.device}{'-quick' if args.quick else ''}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
