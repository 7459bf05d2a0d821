"""Every CUDA kernel against the CPU kernels and the reference, in every run.

The `gpu` fixture runs each test on the emulated CUDA module (csrc/emulation: the same .cu sources
executed on the CPU, blocks, warps and lanes in forward and in reverse order, shared memory and fresh
allocations filled with NaN, inputs fenced by NaN that must stay untouched) and, on a machine with a
GPU, on the GPU itself. What needs the hardware (streams) runs on the GPU only."""
import contextlib

import pytest
import torch

import imm_ext
from imm_ext.ops import mmd_loss_reference, pairwise_kernel_reference

from conftest import DTYPES, ONE_STEP, TOLERANCE, Backend, random_sets, seeded_data, value_and_grads_on

KERNELS = ["laplace", "gaussian", "energy", "imq"]
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (8, 4, 4, 3072), (3, 40, 33, 3), (1, 200, 150, 64),
          (2, 70, 50, 65), (1, 1000, 999, 2), (4, 17, 9, 130)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_cuda_matches_cpu_float64(gpu, kernel, shape, estimator):
    g, n, m, d = shape
    if estimator == "unbiased":
        n, m = max(n, 2), max(m, 2)
    x, y = random_sets(g, n, m, d, seed=d)
    bandwidth = torch.rand(g, dtype=torch.float64) * 5 + 0.5

    def loss_and_grads(xs, ys, h):
        xs, ys = xs.requires_grad_(), ys.requires_grad_()
        loss = imm_ext.mmd_loss(xs, ys, kernel=kernel, bandwidth=h, estimator=estimator, distance_scale="dim",
                                reduction="none")
        return [t.cpu() for t in (loss, *torch.autograd.grad(loss.sum(), (xs, ys)))]

    cpu = loss_and_grads(x.clone(), y.clone(), bandwidth)
    with gpu.active():
        on_gpu = loss_and_grads(gpu.put(x), gpu.put(y), gpu.put(bandwidth))
    for got, want in zip(on_gpu, cpu):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(64, 4, 4, 4096), (1, 500, 400, 3), (2, 50, 60, 72)])
def test_mmd_cuda_low_precision(gpu, dtype, shape):
    g, n, m, d = shape
    x, y = random_sets(g, n, m, d, dtype=dtype, seed=1)
    x, y = gpu.put(x).requires_grad_(), gpu.put(y)
    with gpu.active():
        loss = imm_ext.mmd_loss(x, y, bandwidth=2.0, distance_scale="dim", reduction="sum")
        loss.backward()
    x64 = x.detach().double().requires_grad_()
    expected = mmd_loss_reference(x64, y.double(), bandwidth=2.0, distance_scale="dim", reduction="sum")
    expected.backward()
    torch.testing.assert_close(loss.double().cpu(), expected.cpu(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad.to(dtype).double().cpu(), **TOLERANCE[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
def test_pairwise_kernel_cuda(gpu, kernel):
    x, y = random_sets(2, 130, 70, 5, seed=3)
    x, y = gpu.put(x).requires_grad_(), gpu.put(y).requires_grad_()
    with gpu.active():
        k = imm_ext.pairwise_kernel(x, y, kernel=kernel, bandwidth=[0.5, 2.0])
    expected = pairwise_kernel_reference(x, y, kernel=kernel, bandwidth=[0.5, 2.0])
    torch.testing.assert_close(k, expected, **TOLERANCE[torch.float64])
    weight = torch.randn_like(k)
    with gpu.active():
        got = torch.autograd.grad((k * weight).sum(), (x, y))
    want = torch.autograd.grad((expected * weight).sum(), (x, y))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float64])


def test_cuda_opcheck_and_compile(gpu):
    from imm_ext.ops import pairwise_ops

    x, y = (gpu.put(t) for t in random_sets(2, 4, 4, 70, dtype=torch.float32))
    h = gpu.put(torch.rand(2, 1) + 0.5)
    with gpu.active():
        torch.library.opcheck(pairwise_ops.mmd_block_sums, (x.requires_grad_(), y, h, "laplace", 0.1, 1e-8))
        fn = torch.compile(lambda a, b: imm_ext.mmd_loss(a, b, bandwidth=h[:, 0]), fullgraph=True)
        torch.testing.assert_close(fn(x, y), imm_ext.mmd_loss(x, y, bandwidth=h[:, 0]))


@pytest.mark.cuda
def test_cuda_non_default_stream_and_device_guard():
    x, y = random_sets(4, 4, 4, 300, dtype=torch.float32, device="cuda")
    expected = imm_ext.mmd_loss(x, y)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = imm_ext.mmd_loss(x, y)
    stream.synchronize()
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------
# The DiT block's per-token ops (norm + modulate, gate + residual, time embeddings): CUDA against CPU.
# CPU and CUDA sum in different orders, then each rounds once to the dtype: one step apart at most
# (ONE_STEP); grad_x is compared at the scale of rstd (it may cancel to ~0).


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("shape,mean", [((1, 1, 1), 0.0), ((3, 70, 33), 0.0), ((2, 5, 7, 1152), 0.0),
                                        ((4, 256, 384), 0.0), ((2, 17), 0.0), ((2, 40, 384), 1e3)])
def test_norm_modulate_cuda_matches_cpu(gpu, dtype, norm, shape, mean):
    b, c = shape[0], shape[-1]
    inputs = (seeded_data(shape, dtype, 1, mean), seeded_data((b, c), dtype, 2), seeded_data((b, c), dtype, 3))
    cotangent = seeded_data(shape, dtype, 4)
    fn = lambda *a: imm_ext.ops.norm_modulate(*a, norm=norm)
    cpu = value_and_grads_on("cpu", fn, inputs, cotangent)
    on_gpu = value_and_grads_on(gpu, fn, inputs, cotangent)
    tol = ONE_STEP[dtype]
    rstd_scale = 1000.0 if c == 1 else 10.0  # eps = 1e-6 on a one-channel row: rstd = 1000
    for i, (g, w) in enumerate(zip(on_gpu, cpu)):
        atol = tol["atol"] * (rstd_scale if i == 1 else 1.0) * (1.0 + mean * (dtype != torch.float64))
        torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 70, 33), (2, 5, 7, 1152), (8, 256, 384), (2, 17)])
def test_gate_residual_cuda_matches_cpu(gpu, dtype, shape):
    b, c = shape[0], shape[-1]
    inputs = (seeded_data(shape, dtype, 5), seeded_data((b, c), dtype, 6), seeded_data(shape, dtype, 7))
    cotangent = seeded_data(shape, dtype, 8)
    cpu = value_and_grads_on("cpu", imm_ext.ops.gate_residual, inputs, cotangent)
    on_gpu = value_and_grads_on(gpu, imm_ext.ops.gate_residual, inputs, cotangent)
    for g, w in zip(on_gpu, cpu):
        torch.testing.assert_close(g, w, **ONE_STEP[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 7, 256])
def test_timestep_embedding_pair_cuda_matches_cpu(gpu, dtype, dim):
    gen = torch.Generator().manual_seed(9)
    c_t, c_s = (1000 * torch.rand(2, 33, generator=gen, dtype=torch.float64)).unbind()
    cotangent = (seeded_data((33, dim), dtype, 10), seeded_data((33, dim), dtype, 11))
    fn = lambda a, b: imm_ext.ops.timestep_embedding_pair(a, b, dim, dtype=dtype)
    cpu = value_and_grads_on("cpu", fn, (c_t, c_s), cotangent)
    on_gpu = value_and_grads_on(gpu, fn, (c_t, c_s), cotangent)
    # float64 cos/sin of arguments up to 1000: CUDA's and glibc's may differ by an ulp of the argument.
    value_tol = dict(rtol=0, atol=5e-13) if dtype == torch.float64 else ONE_STEP[dtype]
    for g, w in zip(on_gpu[:2], cpu[:2]):
        torch.testing.assert_close(g, w, **value_tol)
    for g, w in zip(on_gpu[2:], cpu[2:]):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def _block_path(*a):
    return imm_ext.ops.gate_residual(a[0], a[3], imm_ext.ops.norm_modulate(a[0], a[1], a[2], norm="layer"))


def _block_path_inputs():
    x, shift, scale = (seeded_data(s, torch.float32, i) for i, s in enumerate([(4, 100, 48), (4, 48), (4, 48)]))
    return (x, shift, scale, shift * 0.5), seeded_data((4, 100, 48), torch.float32, 12)


def test_block_ops_cuda_deterministic_opcheck_and_compile(gpu):
    from imm_ext.ops import embedding_ops, norm_ops, residual_ops

    inputs, cotangent = _block_path_inputs()
    first = value_and_grads_on(gpu, _block_path, inputs, cotangent)
    second = value_and_grads_on(gpu, _block_path, inputs, cotangent)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no atomics in the token sums
    compiled = value_and_grads_on(gpu, torch.compile(_block_path, fullgraph=True), inputs, cotangent)
    for a, b in zip(compiled, first):
        torch.testing.assert_close(a, b)
    x, shift, scale, cotangent = (gpu.put(t) for t in (*inputs[:3], cotangent))
    with gpu.active():
        for rms in (False, True):
            torch.library.opcheck(norm_ops.norm_modulate_op, (x.requires_grad_(), shift, scale, rms, 1e-6))
        torch.library.opcheck(residual_ops.gate_residual_op, (x.detach(), shift.requires_grad_(), cotangent))
        torch.library.opcheck(embedding_ops.timestep_embedding_op, (gpu.put(torch.rand(5, dtype=torch.float64))
                                                          .requires_grad_(), 9, 10_000.0, torch.bfloat16))


@pytest.mark.cuda
def test_block_ops_cuda_stream():
    inputs, cotangent = _block_path_inputs()
    first = value_and_grads_on(Backend("cuda"), _block_path, inputs, cotangent)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_stream = value_and_grads_on(Backend("cuda"), _block_path, inputs, cotangent)
    stream.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(first, on_stream))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 70, 33), (8, 256, 1536), (0, 5)])
def test_gelu_tanh_cuda_matches_cpu(gpu, dtype, shape):
    """Values and gradients (expf on the device, the vectorised exp on the host), saturation and
    infinities included."""
    x = (3 * seeded_data(shape, torch.float64, 13)).to(dtype)
    if x.numel() > 4:
        x.view(-1)[:4] = torch.tensor([float("inf"), -float("inf"), 1e4, -1e4], dtype=dtype)
    cotangent = seeded_data(shape, dtype, 14)
    cpu = value_and_grads_on("cpu", imm_ext.ops.gelu_tanh, (x,), cotangent)
    on_gpu = value_and_grads_on(gpu, imm_ext.ops.gelu_tanh, (x,), cotangent)
    for g, w in zip(on_gpu, cpu):
        torch.testing.assert_close(g, w, **ONE_STEP[dtype])


def test_gelu_tanh_cuda_opcheck_and_compile(gpu):
    from imm_ext.ops import activation_ops as ops

    x, cotangent = seeded_data((4, 100, 48), torch.float32, 15), seeded_data((4, 100, 48), torch.float32, 16)
    first = value_and_grads_on(gpu, imm_ext.ops.gelu_tanh, (x,), cotangent)
    compiled = value_and_grads_on(gpu, torch.compile(imm_ext.ops.gelu_tanh, fullgraph=True), (x,), cotangent)
    for a, b in zip(compiled, first):
        torch.testing.assert_close(a, b)
    x, cotangent = gpu.put(x), gpu.put(cotangent)
    with gpu.active():
        torch.library.opcheck(ops.gelu_tanh_op, (x.clone().requires_grad_(),))
        torch.library.opcheck(ops.gelu_tanh_backward_op, (cotangent, x))


@pytest.mark.cuda
def test_gelu_tanh_cuda_stream():
    x, cotangent = seeded_data((4, 100, 48), torch.float32, 15), seeded_data((4, 100, 48), torch.float32, 16)
    first = value_and_grads_on(Backend("cuda"), imm_ext.ops.gelu_tanh, (x,), cotangent)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_stream = value_and_grads_on(Backend("cuda"), imm_ext.ops.gelu_tanh, (x,), cotangent)
    stream.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(first, on_stream))


# ---------------------------------------------------------------------------------------------
# Fused attention

ATTENTION_SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 8), (2, 2, 33, 70, 72), (1, 2, 130, 257, 64),
                    (1, 1, 300, 50, 128), (2, 1, 17, 300, 80), (1, 2, 40, 40, 96), (1, 1, 65, 33, 33)]


def _attention_inputs(b, h, tq, tk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda t: torch.randn(b, h, t, d, generator=gen, dtype=torch.float64).to(dtype)
    return make(tq), make(tk), make(tk), make(tq)


def _attention_values_and_grads(q, k, v, grad_out, backend):
    """Output and gradients on "cpu" or on a Backend; q, k, v, grad_out already where they run."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    with contextlib.nullcontext() if backend == "cpu" else backend.active():
        out = imm_ext.ops.attention(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return [t.detach().cpu() for t in (out, *grads)]


def _assert_attention_close(got, want):
    for a, b in zip(got, want):
        if a.dtype in (torch.float64, torch.float32):
            torch.testing.assert_close(a, b, **TOLERANCE[a.dtype])
        else:  # both sides round to 16 bits once: allow a rounding step relative to the largest entry
            relative = 2e-2 if a.dtype == torch.bfloat16 else 4e-3
            torch.testing.assert_close(a.double(), b.double(), rtol=relative,
                                       atol=relative * (float(b.abs().max()) + 1e-3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_attention_cuda_matches_cpu(gpu, dtype, shape):
    inputs = _attention_inputs(*shape, dtype, seed=shape[3])
    _assert_attention_close(_attention_values_and_grads(*(gpu.put(t) for t in inputs), gpu),
                            _attention_values_and_grads(*inputs, "cpu"))


def test_attention_cuda_strided_views_inference_and_determinism(gpu):
    b, t, h, d = 2, 45, 3, 72
    qkv_cpu = torch.randn(b, t, 3, h, d)
    qkv = gpu.put(qkv_cpu)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    grad_out = torch.randn(b, h, t, d)
    got = _attention_values_and_grads(q, k, v, gpu.put(grad_out), gpu)
    want = _attention_values_and_grads(*(qkv_cpu[:, :, i].transpose(1, 2) for i in range(3)), grad_out, "cpu")
    _assert_attention_close(got, want)
    again = _attention_values_and_grads(q, k, v, gpu.put(grad_out), gpu)
    assert all(torch.equal(a, b) for a, b in zip(got, again)), "the backward must be deterministic"
    with torch.no_grad(), gpu.active():
        torch.testing.assert_close(imm_ext.ops.attention(q, k, v).cpu(), got[0], rtol=0, atol=0)


def test_attention_cuda_opcheck_and_compile(gpu):
    from imm_ext.ops import attention_ops

    q, k, v = (gpu.put(t) for t in _attention_inputs(2, 2, 37, 41, 64, torch.float32)[:3])
    with gpu.active():
        torch.library.opcheck(attention_ops.attention_forward, (q.clone().requires_grad_(), k.clone().requires_grad_(),
                                                                v.clone().requires_grad_(), 0.3))
        out, lse = attention_ops.attention_forward(q, k, v, 0.3)
        torch.library.opcheck(attention_ops.attention_backward, (torch.randn_like(out), q, k, v, out, lse, 0.3))
        fn = torch.compile(lambda a, b, c: imm_ext.ops.attention(a, b, c).square().sum(), fullgraph=True)
        torch.testing.assert_close(fn(q, k, v), imm_ext.ops.attention(q, k, v).square().sum())


@pytest.mark.cuda
def test_attention_cuda_stream():
    q, k, v = (t.cuda() for t in _attention_inputs(2, 2, 37, 41, 64, torch.float32)[:3])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_stream = imm_ext.ops.attention(q, k, v)
    stream.synchronize()
    torch.testing.assert_close(on_stream, imm_ext.ops.attention(q, k, v), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Interpolant and sampler updates

INTERPOLANT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _interpolant_data(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _coefficients(groups, seed, n=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(groups, generator=gen, dtype=torch.float64) * 2 - 0.5 for _ in range(n)]


@pytest.mark.parametrize("dtype", INTERPOLANT_DTYPES)
def test_interpolant_pair_cuda_matches_cpu(gpu, dtype):
    from imm_ext.ops import interpolant_pair

    x, noise = _interpolant_data((12, 3, 17, 5), dtype, 44), _interpolant_data((12, 3, 17, 5), dtype, 45)
    coef = _coefficients(3, 46)
    cpu = interpolant_pair(x, noise, *coef, 4)
    x_gpu = gpu.put(x).requires_grad_()
    with gpu.active():
        on_gpu = interpolant_pair(x_gpu, gpu.put(noise), *[gpu.put(c) for c in coef], 4)
        on_gpu[0].sum().backward()
    for got, want in zip(on_gpu, cpu):
        torch.testing.assert_close(got.detach().cpu(), want, rtol=0, atol=0)
    assert x_gpu.grad is not None and x_gpu.grad.device == x_gpu.device


@pytest.mark.parametrize("state,gdt", [(torch.float64, torch.float32), (torch.float32, torch.float32),
                                       (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
@pytest.mark.parametrize("guided", [False, True])
def test_sampler_step_cuda_matches_cpu(gpu, state, gdt, guided):
    from imm_ext.ops import sampler_step

    x = _interpolant_data((6, 3, 9, 9), state, 47)
    g_c, g_u = _interpolant_data((6, 3, 9, 9), gdt, 48), _interpolant_data((6, 3, 9, 9), gdt, 49)
    c_skip, c_out = _coefficients(6, 50, n=2)
    cpu = sampler_step(x, g_c, c_skip, c_out, **(dict(g_uncond=g_u, guidance=1.5) if guided else {}))
    with gpu.active():
        on_gpu = sampler_step(gpu.put(x), gpu.put(g_c), gpu.put(c_skip), gpu.put(c_out),
                              **(dict(g_uncond=gpu.put(g_u), guidance=1.5) if guided else {}))
    tol = dict(rtol=1e-12, atol=1e-12) if state == torch.float64 else TOLERANCE[state]
    torch.testing.assert_close(on_gpu.cpu(), cpu, **tol)


def test_interpolant_cuda_opcheck(gpu):
    from imm_ext.ops import interpolant_ops

    x, noise = (gpu.put(_interpolant_data((6, 3, 5), torch.float32, seed)) for seed in (51, 52))
    coef = gpu.put(torch.stack(_coefficients(3, 53), 1))
    c_skip, c_out = (gpu.put(c) for c in _coefficients(6, 54, n=2))
    with gpu.active():
        torch.library.opcheck(interpolant_ops.interpolant_pair_op, (x.requires_grad_(), noise, coef, 2))
        torch.library.opcheck(interpolant_ops.sampler_step_op, (x.detach(), noise, noise, c_skip, c_out, 1.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_cuda_backward_reads_the_distances_the_forward_kept(gpu, dtype):
    from imm_ext.ops import pairwise_ops

    x, y = (gpu.put(t) for t in random_sets(3, 4, 5, 300, dtype=dtype))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    h = gpu.put(torch.rand(3, 1, dtype=acc) + 0.5)
    w0, w1 = gpu.put(torch.randn(3, 4, 4, dtype=acc)), gpu.put(torch.randn(3, 4, 5, dtype=acc))
    with gpu.active():
        _, kept = pairwise_ops.mmd_block_sums(x, y, h, "laplace", 1 / 300, 1e-8)
        with_kept = pairwise_ops.pair_gradient(x, x, w0, y, w1, h, "laplace", 1 / 300, 1e-8, distances=kept)
        recomputed = pairwise_ops.pair_gradient(x, x, w0, y, w1, h, "laplace", 1 / 300, 1e-8)
    points = torch.cat([x, y], 1).to(acc).cpu()
    torch.testing.assert_close(kept.cpu(), torch.cdist(x.to(acc).cpu(), points).square(), rtol=1e-4, atol=1e-3)
    assert torch.equal(with_kept, recomputed)  # the distances of the same sweep
