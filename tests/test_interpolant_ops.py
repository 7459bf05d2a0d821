"""imm_ext.ops.interpolant_pair and imm_ext.ops.sampler_step: values against the pure-PyTorch
references, gradients, the op contract (opcheck, torch.compile) and bad input (CUDA against CPU: test_cuda.py)."""
import pytest
import torch
from hypothesis import given, strategies as st

from imm_ext.ops import (interpolant_ops, interpolant_pair, interpolant_pair_reference, sampler_step,
                         sampler_step_reference)

from conftest import TOLERANCE

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _data(shape, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _coefficients(groups, seed=1, n=4, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(groups, generator=gen, dtype=torch.float64).to(device) * 2 - 0.5 for _ in range(n)]


def _assert_close(actual, expected):
    # Both sides round the same accumulation-dtype value once; allow one rounding step of slack.
    torch.testing.assert_close(actual, expected, **TOLERANCE[expected.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@given(groups=st.integers(1, 5), particles=st.integers(1, 4),
       rest=st.lists(st.integers(1, 7), min_size=0, max_size=3), seed=st.integers(0, 100))
def test_interpolant_pair_matches_reference(dtype, groups, particles, rest, seed):
    shape = (groups * particles, *rest)
    x, noise = _data(shape, dtype, seed), _data(shape, dtype, seed + 1)
    coef = _coefficients(groups, seed)
    x_t, x_r = interpolant_pair(x, noise, *coef, particles)
    ref_t, ref_r = interpolant_pair_reference(x, noise, *coef, particles)
    assert x_t.dtype == dtype and x_t.shape == x.shape
    _assert_close(x_t, ref_t)
    _assert_close(x_r, ref_r)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,particles", [((4, 3, 5, 5), 4), ((6, 33), 2), ((3, 17, 19), 1), ((8, 4097), 8)])
def test_interpolant_pair_shapes_and_noncontiguous(dtype, shape, particles):
    x = _data((shape[0], *shape[1:][::-1]), dtype, 3).transpose(1, -1)  # non-contiguous
    noise = _data((*shape[:-1], 2 * shape[-1]), dtype, 4)[..., ::2]  # non-contiguous
    coef = _coefficients(shape[0] // particles, 5)
    for got, want in zip(interpolant_pair(x, noise, *coef, particles),
                         interpolant_pair_reference(x, noise, *coef, particles)):
        _assert_close(got, want)


def test_interpolant_pair_large_exact_float64():
    x, noise = _data((64, 3, 32, 32), torch.float64, 6), _data((64, 3, 32, 32), torch.float64, 7)
    coef = _coefficients(16, 8)
    for got, want in zip(interpolant_pair(x, noise, *coef, 4), interpolant_pair_reference(x, noise, *coef, 4)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_interpolant_pair_gradients_match_reference(dtype):
    x, noise = _data((6, 3, 4), dtype, 9), _data((6, 3, 4), dtype, 10)
    coef = _coefficients(3, 11)
    w_t, w_r = _data((6, 3, 4), dtype, 12), _data((6, 3, 4), dtype, 13)
    grads = []
    for fn in (interpolant_pair, interpolant_pair_reference):
        a, b = x.clone().requires_grad_(), noise.clone().requires_grad_()
        x_t, x_r = fn(a, b, *coef, 2)
        ((x_t * w_t).sum() + (x_r * w_r).sum()).backward()
        grads.append((a.grad, b.grad))
    for got, want in zip(*grads):
        _assert_close(got, want)
    # Only one output used: the other cotangent is None.
    a = x.clone().requires_grad_()
    interpolant_pair(a, noise, *coef, 2)[1].sum().backward()
    _assert_close(a.grad, coef[2].repeat_interleave(2).reshape(6, 1, 1).to(dtype).expand_as(x))


def test_interpolant_pair_gradcheck():
    x, noise = _data((4, 2, 3), torch.float64, 14), _data((4, 2, 3), torch.float64, 15)
    coef = _coefficients(2, 16)
    fn = lambda a, b: interpolant_pair(a, b, *coef, 2)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), noise.requires_grad_()))
    assert torch.autograd.gradgradcheck(fn, (x, noise))


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    x, noise = _data((6, 3, 5), dtype, 17), _data((6, 3, 5), dtype, 18)
    coef = torch.stack(_coefficients(3, 19), 1)
    torch.library.opcheck(interpolant_ops.interpolant_pair_op,
                          (x.clone().requires_grad_(), noise.clone().requires_grad_(), coef, 2))
    torch.library.opcheck(interpolant_ops.interpolant_pair_op, (x, noise, coef, 6 // 2))
    c_skip, c_out = _coefficients(6, 20, n=2)
    g_c, g_u = _data((6, 3, 5), torch.float32, 21), _data((6, 3, 5), torch.float32, 22)
    torch.library.opcheck(interpolant_ops.sampler_step_op, (x, g_c, g_u, c_skip, c_out, 1.5))
    torch.library.opcheck(interpolant_ops.sampler_step_op, (x, g_c.to(dtype), None, c_skip, c_out, 1.0))


def test_torch_compile_fullgraph_matches_eager():
    x, noise = _data((8, 3, 4, 4), torch.float32, 23), _data((8, 3, 4, 4), torch.float32, 24)
    coef = _coefficients(2, 25)

    def fn(a, b, at, st_, ar, sr):
        x_t, x_r = interpolant_pair(a, b, at, st_, ar, sr, 4)
        return (x_t.square().sum() + (x_t * x_r).sum()) * 0.5

    compiled = torch.compile(fn, fullgraph=True)
    a, b = x.clone().requires_grad_(), noise.clone().requires_grad_()
    expected = fn(a, b, *coef)
    expected.backward()
    a2, b2 = x.clone().requires_grad_(), noise.clone().requires_grad_()
    got = compiled(a2, b2, *coef)
    got.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(a2.grad, a.grad)
    torch.testing.assert_close(b2.grad, b.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("guided", [False, True])
def test_sampler_step_matches_reference(dtype, guided):
    shape = (5, 3, 7, 9)
    x, g_c, g_u = _data(shape, dtype, 26), _data(shape, dtype, 27), _data(shape, dtype, 28)
    c_skip, c_out = _coefficients(5, 29, n=2)
    kwargs = dict(g_uncond=g_u, guidance=1.5) if guided else {}
    got = sampler_step(x, g_c, c_skip, c_out, **kwargs)
    assert got.dtype == dtype
    _assert_close(got, sampler_step_reference(x, g_c, c_skip, c_out, **kwargs))


@pytest.mark.parametrize("guided", [False, True])
def test_sampler_step_float64_state_float32_output(guided):
    shape = (4, 3, 8, 8)
    x = _data(shape, torch.float64, 30)
    g_c, g_u = _data(shape, torch.float32, 31), _data(shape, torch.float32, 32)
    c_skip, c_out = _coefficients(4, 33, n=2)
    kwargs = dict(g_uncond=g_u, guidance=1.25) if guided else {}
    got = sampler_step(x, g_c, c_skip, c_out, **kwargs)
    assert got.dtype == torch.float64
    want = sampler_step_reference(x, g_c, c_skip, c_out, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # Non-contiguous network output, under inference_mode.
    with torch.inference_mode():
        g_nc = g_c.transpose(2, 3).contiguous().transpose(2, 3)
        torch.testing.assert_close(sampler_step(x, g_nc, c_skip, c_out, **kwargs), want, rtol=1e-12, atol=1e-12)


def test_sampler_step_guidance_ignored_without_uncond():
    x, g = _data((2, 3), torch.float32, 34), _data((2, 3), torch.float32, 35)
    c_skip, c_out = _coefficients(2, 36, n=2)
    torch.testing.assert_close(sampler_step(x, g, c_skip, c_out, guidance=7.0), sampler_step(x, g, c_skip, c_out))


def test_fallback_path_matches_kernel(monkeypatch):
    x, noise = _data((6, 5), torch.float32, 37), _data((6, 5), torch.float32, 38)
    coef = _coefficients(3, 39)
    c_skip, c_out = _coefficients(6, 40, n=2)
    kernel = interpolant_pair(x, noise, *coef, 2), sampler_step(x, noise, c_skip, c_out, g_uncond=x, guidance=2.0)
    monkeypatch.setattr(interpolant_ops, "has_kernel", lambda t: False)
    fallback = interpolant_pair(x, noise, *coef, 2), sampler_step(x, noise, c_skip, c_out, g_uncond=x, guidance=2.0)
    torch.testing.assert_close(fallback, kernel)


def test_bad_input():
    x, noise = torch.randn(4, 3), torch.randn(4, 3)
    c2 = _coefficients(2, 41)
    with pytest.raises(ValueError, match="noise"):
        interpolant_pair(x, torch.randn(4, 2), *c2, 2)
    with pytest.raises(TypeError, match="noise"):
        interpolant_pair(x, noise.double(), *c2, 2)
    with pytest.raises(ValueError, match="divisible by particles"):
        interpolant_pair(x, noise, *_coefficients(1, 42), 3)
    with pytest.raises(ValueError, match="particles"):
        interpolant_pair(x, noise, *c2, 0)
    with pytest.raises(ValueError, match="alpha_t"):
        interpolant_pair(x, noise, torch.rand(3, dtype=torch.float64), *c2[1:], 2)
    with pytest.raises(ValueError, match="sigma_r must be finite"):
        interpolant_pair(x, noise, *c2[:3], torch.tensor([1.0, float("nan")], dtype=torch.float64), 2)
    with pytest.raises(TypeError, match="x must be float32"):
        interpolant_pair(x.long(), noise.long(), *c2, 2)
    with pytest.raises(TypeError, match="sigma_t"):
        interpolant_pair(x, noise, c2[0], torch.ones(2, dtype=torch.int64), *c2[2:], 2)
    with pytest.raises(ValueError, match="alpha_r must not require grad"):
        interpolant_pair(x, noise, c2[0], c2[1], c2[2].clone().requires_grad_(), c2[3], 2)
    with pytest.raises(ValueError, match="noise must be on the device"):
        interpolant_pair(x, noise.to("meta"), *c2, 2)
    c_skip, c_out = _coefficients(4, 43, n=2)
    with pytest.raises(ValueError, match="g_cond"):
        sampler_step(x, torch.randn(4, 4), c_skip, c_out)
    with pytest.raises(TypeError, match="g_uncond"):
        sampler_step(x, noise, c_skip, c_out, g_uncond=noise.int(), guidance=1.5)
    with pytest.raises(ValueError, match="guidance"):
        sampler_step(x, noise, c_skip, c_out, g_uncond=noise)
    with pytest.raises(ValueError, match="c_out"):
        sampler_step(x, noise, c_skip, c_out[:3])
    with pytest.raises(ValueError, match="c_skip must be finite"):
        sampler_step(x, noise, torch.full((4,), float("inf"), dtype=torch.float64), c_out)
