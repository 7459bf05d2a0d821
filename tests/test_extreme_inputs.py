"""Inputs at the edges of memory and of the float range, each with a known answer: sizes whose scratch
cannot be allocated (MemoryError, never a crash), bandwidths down to the smallest positive floats
(exact zeros, finite gradients), and activations whose squares overflow (a finite LayerNorm).
Cases that used to end the process run in a fresh interpreter, so a signal fails the test instead
of ending pytest."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import imm_ext
from imm_ext.ops import block_reference, norm_modulate, norm_ops, pairwise_ops, reference
from imm_ext.ops.device import emulated_cuda


def _run_isolated(code: str, env=None, prelude: str = "") -> subprocess.CompletedProcess:
    """prelude, then code, in a fresh interpreter (this file's folder importable); its exit status and
    output."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)


def _assert_prints(code: str, expected: str, env=None, prelude: str = "") -> None:
    """code, run isolated, exits normally and prints `expected` last."""
    run = _run_isolated(code, env, prelude)
    assert run.returncode == 0, f"exit status {run.returncode} (negative: killed by that signal)\n{run.stderr[-3000:]}"
    assert run.stdout.split()[-1:] == [expected], run.stdout[-3000:] + run.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Scratch that cannot be allocated: MemoryError from the op, the process intact.

# Address space left after the setup: enough for the op's outputs, not for its scratch.
_LIMITED_ADDRESS_SPACE = """
import resource
def limit_address_space(headroom_bytes):
    with open("/proc/self/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom_bytes, resource.RLIM_INFINITY))
"""


def test_attention_forward_with_unallocatable_scratch_raises_memory_error():
    """Expanded k and v (stride 0 over keys) are read in place; packing 2^40 keys cannot be allocated."""
    _assert_prints("""
        import torch, imm_ext
        q = torch.randn(1, 2, 3, 64)
        k, v = (torch.randn(1, 2, 1, 64).expand(1, 2, 2**40, 64) for _ in range(2))
        try:
            imm_ext.ops.attention(q, k, v)
        except MemoryError:
            print("MemoryError")
    """, "MemoryError")


def test_attention_backward_with_unallocatable_scratch_raises_memory_error():
    """The backward's per-head scratch (several times one head's inputs) does not fit the address
    space left after its outputs."""
    _assert_prints("""
        import torch, imm_ext
        torch.set_num_threads(2)
        q, k, v = (torch.randn(1, 1, 8192, 64, requires_grad=True) for _ in range(3))
        out = imm_ext.ops.attention(q, k, v)
        grad_out = torch.randn_like(out)
        (torch.ones(2, requires_grad=True) * 1).backward(torch.ones(2))  # autograd imports sympy lazily
        limit_address_space(3 * q.nbytes + (8 << 20))
        try:
            out.backward(grad_out)
        except MemoryError:
            print("MemoryError")
    """, "MemoryError", prelude=_LIMITED_ADDRESS_SPACE)


def test_pairwise_wide_layout_with_unallocatable_scratch_raises_memory_error():
    """The wide layout's per-thread squared distances (4 rows x every column) do not fit the address
    space left after the output."""
    _assert_prints("""
        import torch, imm_ext
        torch.set_num_threads(2)
        x, y = torch.randn(1, 1, 65), torch.zeros(1, 1 << 22, 65)  # zeros: pages stay untouched
        imm_ext.pairwise_kernel(x, y[:, :64], kernel="gaussian")  # threads started before the limit
        limit_address_space(2 * (1 << 22) * 4)
        try:
            imm_ext.pairwise_kernel(x, y, kernel="gaussian")
        except MemoryError:
            print("MemoryError")
    """, "MemoryError", prelude=_LIMITED_ADDRESS_SPACE)


# ---------------------------------------------------------------------------------------------
# Tiny bandwidths: well-separated points have kernel value exactly 0 and zero gradient.

# (kernel, bandwidths) per accumulation dtype; float32 reaches into its subnormals (1e-39, 1e-45).
_TINY = {
    torch.float32: {"gaussian": [1e-18, 1e-19, 1e-30, 1e-39], "laplace": [1e-38, 1e-39, 1e-45],
                    "imq": [1e-19, 1e-30, 1e-39]},
    torch.float64: {"gaussian": [1e-150, 1e-160, 1e-310], "laplace": [1e-307, 1e-309, 1e-320],
                    "imq": [1e-160, 1e-300, 1e-310]},
}


def _separated_sets(dtype, dim):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, dim, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 4, dim, generator=gen, dtype=torch.float64) + 10
    return x.to(dtype), y.to(dtype)


def _loss_and_grads(fn, x, y, device="cpu", **options):
    """(loss, grad x, grad y) of fn on `device`, returned on the CPU."""
    x, y = (t.detach().to(device).requires_grad_() for t in (x, y))
    loss = fn(x, y, **options)
    loss.backward()
    return loss.detach().cpu(), x.grad.cpu(), y.grad.cpu()


def _check_tiny_bandwidths(device="cpu"):
    """mmd_loss and pairwise_kernel on `device` against the float64 reference on the same inputs:
    equal values, and gradients that are finite and equal (zero up to the diagonal's terms)."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for kernel, bandwidths in _TINY[acc].items():
            for h in bandwidths:
                h_acc = torch.tensor(h, dtype=acc).item()  # as the kernels see it
                for dim in (3, 80):  # narrow and wide layouts
                    x, y = _separated_sets(dtype, dim)
                    # The unbiased estimator subtracts the diagonal's terms from sums they dominate:
                    # only where those terms vanish (not imq) is its float32 result exact.
                    for estimator in ("biased",) if kernel == "imq" else ("biased", "unbiased"):
                        options = dict(kernel=kernel, bandwidth=h_acc, estimator=estimator, distance_scale="dim")
                        got = _loss_and_grads(imm_ext.mmd_loss, x, y, device, **options)
                        want = _loss_and_grads(reference.mmd_loss_reference, x.double(), y.double(), **options)
                        _assert_same_answer(got, want, f"mmd_loss {dtype} {kernel} h={h} D={dim} {estimator}", dtype)
                    matrix = lambda a, b, **o: imm_ext.pairwise_kernel(a, b, **o).to(acc).square().sum()
                    options = dict(kernel=kernel, bandwidth=h_acc)
                    got = _loss_and_grads(matrix, x, y, device, **options)
                    want = _loss_and_grads(lambda a, b, **o: reference.pairwise_kernel_reference(a, b, **o)
                                           .square().sum(), x.double(), y.double(), **options)
                    _assert_same_answer(got, want, f"pairwise_kernel {dtype} {kernel} h={h} D={dim}", dtype)
    print("ok")


# Relative to the largest magnitude of each compared tensor (the gradient's sums cancel in part);
# 16-bit gradients come back rounded to their dtype, float16's below its smallest subnormal to 0.
_ANSWER_TOLERANCE = {torch.float64: (1e-10, 1e-300), torch.float32: (1e-5, 1e-30), torch.bfloat16: (1e-2, 1e-30),
                     torch.float16: (1e-2, 1e-7)}


def _assert_same_answer(got, want, what, dtype=torch.float32):
    rtol, atol = _ANSWER_TOLERANCE[dtype]
    for a, b in zip(got, want):
        assert torch.isfinite(a).all(), f"{what}: non-finite {a}"
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=max(atol, rtol * scale), msg=lambda m: f"{what}: {m}")


def test_tiny_bandwidths_give_exact_values_and_finite_gradients():
    _check_tiny_bandwidths()


@pytest.mark.cuda
def test_tiny_bandwidths_on_cuda():
    _check_tiny_bandwidths("cuda")


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_tiny_bandwidths_on_the_emulated_cuda_kernels(order):
    with emulated_cuda(order):
        _check_tiny_bandwidths("cpu")


def test_tiny_bandwidths_on_the_pure_pytorch_path(monkeypatch):
    monkeypatch.setattr(pairwise_ops, "has_kernel", lambda t: False)
    _check_tiny_bandwidths()


def test_reference_gradients_are_finite_at_tiny_bandwidths():
    """The reference differentiates exp(-u^2/2) and (1 + u^2)^(-1/2) where u = d / h overflows."""
    x, y = _separated_sets(torch.float32, 3)
    for kernel, bandwidths in _TINY[torch.float32].items():
        for h in bandwidths:
            got = _loss_and_grads(reference.mmd_loss_reference, x, y, kernel=kernel, bandwidth=h)
            want = _loss_and_grads(reference.mmd_loss_reference, x.double(), y.double(), kernel=kernel,
                                   bandwidth=torch.tensor(h, dtype=torch.float32).item())
            _assert_same_answer(got, want, f"reference {kernel} h={h}")


@pytest.mark.skipif(imm_ext.build_info()["cpu_isa"] == "baseline", reason="only the baseline build runs here")
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_tiny_bandwidths_on_every_instruction_set_build(isa):
    _assert_prints("import test_extreme_inputs; test_extreme_inputs._check_tiny_bandwidths()", "ok",
                   env=dict(os.environ, IMM_EXT_CPU_ISA=isa))


# ---------------------------------------------------------------------------------------------
# Activations whose squares overflow: norm + modulate is still finite and right.

# Row magnitudes: ordinary, past the float32 square's overflow, and near the top of the range.
_ROW_SCALES = [1.0, 2e19, 3e24, 1e30, 1e36, 2e37]


def _large_rows(dtype, mixed_signs_near_max, channels=48):
    gen = torch.Generator().manual_seed(11)
    rows = torch.randn(2, len(_ROW_SCALES) + 1, channels, generator=gen, dtype=torch.float64)
    rows[:, : len(_ROW_SCALES)] *= torch.tensor(_ROW_SCALES, dtype=torch.float64)[:, None]
    rows[:, -1] = 1e38 * torch.sign(rows[:, -1])  # mixed signs: |x - mean| beyond the largest float
    rows[:, -1, 0] = 3e38
    if not mixed_signs_near_max:
        rows = rows[:, :-1]
    x = rows.to(dtype)
    shift = torch.randn(2, channels, generator=gen, dtype=torch.float64).to(dtype)
    scale = torch.randn(2, channels, generator=gen, dtype=torch.float64).to(dtype)
    return x, shift, scale


def _norm_values_and_grads(fn, inputs, cotangent, device="cpu"):
    """[y, grad x, grad shift, grad scale] of fn on `device`, returned on the CPU."""
    leaves = [t.detach().to(device).requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(cotangent.to(device=device, dtype=out.dtype))
    return [out.detach().cpu()] + [t.grad.cpu() for t in leaves]


def _assert_rows_close(got, want, rtol, what):
    """Each row (last dim) within rtol of its own largest magnitude: the rows' scales differ by 1e38."""
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    row_scale = want.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    error = ((got - want).abs() / row_scale).amax()
    assert error <= rtol, f"{what}: largest error {error:.3g} of the row's scale"


def _check_large_activations(dtype, norm, fn, mixed_signs_near_max=True, device="cpu"):
    x, shift, scale = _large_rows(dtype, mixed_signs_near_max)
    cotangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    want = _norm_values_and_grads(lambda *a: block_reference.norm_modulate_reference(*a, norm=norm),
                                  [t.double() for t in (x, shift, scale)], cotangent)
    got = _norm_values_and_grads(lambda *a: fn(*a, norm=norm), (x, shift, scale), cotangent, device)
    rtol = {torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype]
    for a, b, name in zip(got, want, ("y", "grad_x", "grad_shift", "grad_scale")):
        _assert_rows_close(a, b, rtol, f"{dtype} {norm} {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_norm_modulate_rows_whose_squares_overflow(dtype, norm):
    _check_large_activations(dtype, norm, norm_modulate)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_norm_modulate_rows_whose_squares_overflow_on_cuda(dtype, norm):
    _check_large_activations(dtype, norm, norm_modulate, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_norm_modulate_rows_whose_squares_overflow_on_the_emulated_cuda_kernels(dtype, norm):
    with emulated_cuda("reverse"):
        _check_large_activations(dtype, norm, norm_modulate)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_norm_modulate_large_rows_on_the_pure_pytorch_path(norm, monkeypatch):
    """Its statistics are right for every finite row; x - mean itself overflows where it exceeds
    the largest float, so the mixed-sign row is left out here."""
    monkeypatch.setattr(norm_ops, "has_kernel", lambda t: False)
    _check_large_activations(torch.float32, norm, norm_modulate, mixed_signs_near_max=False)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_norm_modulate_reference_rows_whose_squares_overflow(norm):
    _check_large_activations(torch.float32, norm, block_reference.norm_modulate_reference)


def test_norm_modulate_float16_near_its_largest_value():
    """float16's range ends long before float32 squares overflow: the ordinary path, checked."""
    gen = torch.Generator().manual_seed(13)
    x = (6e4 * torch.sign(torch.randn(2, 3, 48, generator=gen))).half()
    shift, scale = torch.randn(2, 48, generator=gen).half(), torch.randn(2, 48, generator=gen).half()
    cotangent = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for norm in ("layer", "rms"):
        want = _norm_values_and_grads(lambda *a: block_reference.norm_modulate_reference(*a, norm=norm),
                                      [t.double() for t in (x, shift, scale)], cotangent)
        got = _norm_values_and_grads(lambda *a: norm_modulate(*a, norm=norm), (x, shift, scale), cotangent)
        for a, b, name in zip(got, want, ("y", "grad_x", "grad_shift", "grad_scale")):
            _assert_rows_close(a, b, 2e-2, f"float16 {norm} {name}")
