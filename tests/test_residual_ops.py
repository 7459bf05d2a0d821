"""imm_ext.ops.gate_residual: values and gradients against the pure-PyTorch reference of
ops/block_reference.py (random shapes, every dtype), strided layouts, partial gradients and bad input.
The generic contract is tests/test_fused_op_contract.py's."""
import pytest
import torch
from hypothesis import given, strategies as st

from imm_ext.ops import gate_residual, gate_residual_reference

from conftest import DTYPES, assert_one_step_close, exact_value_and_grads, seeded_data, value_and_grads


@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=st.integers(1, 3), tokens=st.lists(st.integers(1, 6), min_size=0, max_size=2),
       channels=st.integers(1, 40), seed=st.integers(0, 100))
def test_gate_residual_matches_reference(dtype, batch, tokens, channels, seed):
    shape = (batch, *tokens, channels)
    inputs = (seeded_data(shape, dtype, seed), seeded_data((batch, channels), dtype, seed + 1), seeded_data(shape, dtype, seed + 2))
    cotangent = seeded_data(shape, dtype, seed + 3)
    got, got_grads = value_and_grads(gate_residual, inputs, cotangent)
    want, want_grads = exact_value_and_grads(gate_residual_reference, inputs, cotangent)
    assert_one_step_close(got, want)
    for g, w in zip(got_grads, want_grads):
        assert_one_step_close(g, w)


def test_gate_residual_layouts_and_partial_gradients():
    b, t, c = 2, 70, 24
    x = seeded_data((b, c, t), torch.float32, 13).transpose(1, 2)
    gate, _ = seeded_data((b, 2 * c), torch.float32, 14).chunk(2, dim=1)
    y = seeded_data((b, t, c), torch.float16, 15)  # promoted to float32
    got = gate_residual(x, gate, y)
    assert_one_step_close(got, gate_residual_reference(x, gate, y))
    # Only x requires grad: its gradient is the incoming one.
    leaf = x.detach().requires_grad_()
    cotangent = seeded_data((b, t, c), torch.float32, 16)
    gate_residual(leaf, gate, y).backward(cotangent)
    assert torch.equal(leaf.grad, cotangent)


X, V = torch.randn(2, 3, 4), torch.randn(2, 4)
BAD_INPUTS = [
    (gate_residual, (X, V, X[..., :3]), {}, ValueError, "y must have the shape"),
    (gate_residual, (X, V, X.to("meta")), {}, ValueError, "y must be on the device"),
    (gate_residual, (X, V.T, X), {}, ValueError, "gate must have shape"),
    (gate_residual, (X, V.bool(), X), {}, TypeError, "gate must be float32"),
    (gate_residual, (X, V, X.to(torch.complex64)), {}, TypeError, "y must be float32"),
]


@pytest.mark.parametrize("fn,args,kwargs,error,match", BAD_INPUTS)
def test_bad_input(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)
