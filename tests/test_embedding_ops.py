"""imm_ext.ops.timestep_embedding and timestep_embedding_pair: values against the pure-PyTorch
reference of ops/block_reference.py (every dtype, odd and even dims), gradients, and bad input. The
generic contract is tests/test_fused_op_contract.py's."""
import pytest
import torch

import imm_ext
from imm_ext.ops import timestep_embedding, timestep_embedding_pair, timestep_embedding_pair_reference

from conftest import DTYPES, ONE_STEP, seeded_data, seeded_times


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 7, 64, 256])
def test_timestep_embedding_pair_matches_reference(dtype, dim):
    c_t, c_s = seeded_times(9, 17), seeded_times(9, 18).float()  # c_s in float32: read as float64 like the reference
    got = timestep_embedding_pair(c_t, c_s, dim, dtype=dtype)
    want = timestep_embedding_pair_reference(c_t, c_s, dim, dtype=dtype)
    # Same float64 formula; cos/sin of arguments up to 1000 may differ by an ulp of the argument
    # between libm and PyTorch's vectorised versions, and that is all (then one rounding to dtype).
    tolerance = dict(rtol=0, atol=5e-13) if dtype == torch.float64 else ONE_STEP[dtype]
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == (9, dim)
        torch.testing.assert_close(g, w, **tolerance)
    torch.testing.assert_close(timestep_embedding(c_t, dim, dtype=dtype), got[0], rtol=0, atol=0)
    assert imm_ext.models.timestep_embedding is timestep_embedding


def test_timestep_embedding_pair_gradients():
    c_t, c_s = seeded_times(6, 19), seeded_times(6, 20)
    cotangents = seeded_data((6, 33), seed=21), seeded_data((6, 33), seed=22)

    def grads(fn):
        a, b = c_t.clone().requires_grad_(), c_s.clone().requires_grad_()
        e_t, e_s = fn(a, b, 33, max_period=100.0, dtype=torch.float64)
        return torch.autograd.grad((e_t * cotangents[0]).sum() + (e_s * cotangents[1]).sum(), (a, b))

    for g, w in zip(grads(timestep_embedding_pair), grads(timestep_embedding_pair_reference)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)



C = torch.rand(3, dtype=torch.float64)
BAD_INPUTS = [
    (timestep_embedding_pair, (C[:, None], C, 8), {}, ValueError, r"c_t must have shape \(B,\)"),
    (timestep_embedding_pair, (C, C.long(), 8), {}, TypeError, "c_s must be a floating-point"),
    (timestep_embedding_pair, (C, C[:2], 8), {}, ValueError, "c_s must have the shape of c_t"),
    (timestep_embedding_pair, (C, C.to("meta"), 8), {}, ValueError, "c_s must be on the device"),
    (timestep_embedding_pair, (C, C, 0), {}, ValueError, "dim must be a positive int"),
    (timestep_embedding_pair, (C, C, 8.0), {}, ValueError, "dim must be a positive int"),
    (timestep_embedding_pair, (C, C, 8), dict(max_period=float("inf")), ValueError, "max_period"),
    (timestep_embedding_pair, (C, C, 8), dict(dtype=torch.int32), TypeError, "dtype must be"),
    (timestep_embedding, (C[:0], 8), {}, ValueError, "c must have shape"),
]


@pytest.mark.parametrize("fn,args,kwargs,error,match", BAD_INPUTS)
def test_bad_input(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)
