"""imm_ext.ops.norm_modulate: values and gradients against the pure-PyTorch reference of
ops/block_reference.py (random shapes, every dtype, the DiT layout), large activations, constant rows,
mixed dtypes and bad input. Gradcheck, opcheck, compile and the CUDA kernels are the op contract's
(tests/test_fused_op_contract.py); the DiT block path the ops make up together is test_block_ops.py's."""
import pytest
import torch
from hypothesis import given, strategies as st

from imm_ext.ops import norm_modulate, norm_modulate_reference

from conftest import (DTYPES, ONE_STEP, assert_one_step_close, exact_value_and_grads, norm_inputs, seeded_data,
                      value_and_grads)

NORMS = ["layer", "rms"]


def _assert_norm_grads_close(got, want, x, norm, eps):
    """grad_x = rstd * (terms of size |grad|) may cancel to ~0 (exactly 0 for C = 1), so its
    rounding error is compared at the scale of rstd: atol grows with the largest rstd of x's rows."""
    x64 = x.double()
    centred = x64 if norm == "rms" else x64 - x64.mean(-1, keepdim=True)
    rstd = float(torch.rsqrt(centred.square().mean(-1) + eps).max())
    tolerance = ONE_STEP[want[0].dtype]
    torch.testing.assert_close(got[0], want[0], rtol=tolerance["rtol"], atol=tolerance["atol"] * max(1.0, rstd))
    for g, w in zip(got[1:], want[1:]):
        assert_one_step_close(g, w)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=st.integers(1, 3), tokens=st.lists(st.integers(1, 6), min_size=0, max_size=2),
       channels=st.integers(1, 40), seed=st.integers(0, 100))
def test_norm_modulate_matches_reference(norm, dtype, batch, tokens, channels, seed):
    shape = (batch, *tokens, channels)
    inputs = norm_inputs(shape, dtype, seed)
    cotangent = seeded_data(shape, dtype, seed + 3)
    got, got_grads = value_and_grads(lambda *a: norm_modulate(*a, norm=norm), inputs, cotangent)
    want, want_grads = exact_value_and_grads(lambda *a: norm_modulate_reference(*a, norm=norm), inputs, cotangent)
    assert_one_step_close(got, want)
    _assert_norm_grads_close(got_grads, want_grads, inputs[0], norm, 1e-6)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_modulate_dit_layout(norm, dtype):
    """A non-contiguous x, and shift/scale as chunks of one adaLN projection (strided views), with
    tokens not a multiple of the backward's chunk."""
    b, t, c = 3, 70, 48
    x = seeded_data((b, c, t), dtype, 1).transpose(1, 2)
    shift, scale = seeded_data((b, 2 * c), dtype, 2).chunk(2, dim=1)
    cotangent = seeded_data((b, t, c), dtype, 3)
    assert not (x.is_contiguous() or shift.is_contiguous())
    got, got_grads = value_and_grads(lambda *a: norm_modulate(*a, norm=norm, eps=1e-5), (x, shift, scale), cotangent)
    want, want_grads = exact_value_and_grads(lambda *a: norm_modulate_reference(*a, norm=norm, eps=1e-5),
                                              (x, shift, scale), cotangent)
    assert_one_step_close(got, want)
    _assert_norm_grads_close(got_grads, want_grads, x, norm, 1e-5)


@pytest.mark.parametrize("dtype,mean,bound", [(torch.float32, 1e4, 1e-3), (torch.float64, 1e8, 1e-7)])
def test_norm_modulate_large_activations(dtype, mean, bound):
    """Rows with mean >> std = 1: the statistics are taken of deviations (no E[x^2] - E[x]^2), so the
    error stays near the input's own resolution (the spacing of float32 at 1e4 is 1e-3, of float64
    at 1e8 1.5e-8), and in float32 below that of PyTorch's LayerNorm on the same inputs."""
    x = seeded_data((2, 64, 384), dtype, 4, mean=mean)
    shift, scale = seeded_data((2, 384), dtype, 5), seeded_data((2, 384), dtype, 6, std=0.1)
    cotangent = seeded_data(x.shape, dtype, 7)
    exact = value_and_grads(norm_modulate_reference, (x.double(), shift.double(), scale.double()),
                             cotangent.double())

    def errors(fn):  # of y, grad_x and grad_scale (grad_shift is a plain sum of the cotangent)
        y, (grad_x, _, grad_scale) = value_and_grads(fn, (x, shift, scale), cotangent)
        return [float((a.detach().double() - b).abs().max()) for a, b in zip(
            (y, grad_x, grad_scale), (exact[0].detach(), exact[1][0], exact[1][2]))]

    ours = errors(norm_modulate)
    assert ours[0] < bound and ours[1] < 10 * bound and ours[2] < 100 * bound
    if dtype == torch.float32:
        assert all(a < b for a, b in zip(ours, errors(norm_modulate_reference)))


def test_norm_modulate_constant_rows_and_mixed_dtypes():
    x = torch.full((2, 3, 5), 7.0)
    shift, scale = seeded_data((2, 5), torch.float32, 8), seeded_data((2, 5), torch.float32, 9)
    leaf = x.clone().requires_grad_()
    y = norm_modulate(leaf, shift, scale)
    torch.testing.assert_close(y, shift[:, None].expand_as(y))  # xhat = 0 on a constant row
    y.sum().backward()
    assert torch.isfinite(leaf.grad).all()
    # Mixed dtypes are promoted as the reference promotes them.
    args = (seeded_data((2, 3, 5), torch.bfloat16, 10), seeded_data((2, 5), torch.float16, 11), seeded_data((2, 5), torch.float32, 12))
    got = norm_modulate(*args, norm="rms")
    assert got.dtype == torch.float32
    assert_one_step_close(got, norm_modulate_reference(*args, norm="rms"))



X, V = torch.randn(2, 3, 4), torch.randn(2, 4)
BAD_INPUTS = [
    (norm_modulate, (X.long(), V, V), {}, TypeError, "x must be float32"),
    (norm_modulate, ([1.0], V, V), {}, TypeError, "x must be a torch.Tensor"),
    (norm_modulate, (X[0, 0], V, V), {}, ValueError, "x must have shape"),
    (norm_modulate, (X[:, :0], V, V), {}, ValueError, "x must have shape"),
    (norm_modulate, (X, V[:, :3], V), {}, ValueError, "shift must have shape"),
    (norm_modulate, (X, V, V[:1]), {}, ValueError, "scale must have shape"),
    (norm_modulate, (X, V, V.int()), {}, TypeError, "scale must be float32"),
    (norm_modulate, (X, V, V.to("meta")), {}, ValueError, "scale must be on the device"),
    (norm_modulate, (X, V, V), dict(norm="batch"), ValueError, "norm must be one of"),
    (norm_modulate, (X, V, V), dict(eps=0.0), ValueError, "eps"),
    (norm_modulate, (X, V, V), dict(eps=float("nan")), ValueError, "eps"),
]


@pytest.mark.parametrize("fn,args,kwargs,error,match", BAD_INPUTS)
def test_bad_input(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)
