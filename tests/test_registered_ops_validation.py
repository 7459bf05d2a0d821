"""The registered torch.ops.imm_ext ops validate their own arguments (in the op body, so also for
direct calls and compiled graphs), scalars are checked in the dtype they are used in, and the value
checks of the public functions hold under torch.compile (dynamic=True and fullgraph=True)."""
import math

import pytest
import torch

import imm_ext
from imm_ext.ops import attention

from conftest import random_sets

ops = torch.ops.imm_ext
X, Y = random_sets(2, 4, 5, 3, dtype=torch.float32)
XW = torch.randn(2, 4, 100)  # D > 64: the wide layout, where distances may be kept
H = torch.ones(2, 1)
Q, K = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
A, V = torch.randn(2, 3, 4), torch.randn(2, 4)
C = torch.rand(3, dtype=torch.float64)
XS, C6 = torch.randn(6, 3), torch.rand(6, dtype=torch.float64)
COEF = torch.rand(3, 4, dtype=torch.float64)
LSE = torch.zeros(1, 2, 3)

BAD_DIRECT_CALLS = [
    # imm_ext::mmd_block_sums / pairwise_kernel_matrix / pair_gradient
    (ops.mmd_block_sums, (X, Y, H[:1], "laplace", 1.0, 1e-8), ValueError, "bandwidth must be a \\(G, K\\) table"),
    (ops.mmd_block_sums, (X, Y, torch.ones(2, 17), "laplace", 1.0, 1e-8), ValueError, "1 <= K <= 16"),
    (ops.mmd_block_sums, (X, Y, H.double(), "laplace", 1.0, 1e-8), TypeError, "bandwidth must be float32"),
    (ops.mmd_block_sums, (X, Y, H.to("meta"), "laplace", 1.0, 1e-8), ValueError, "bandwidth must be on the device"),
    (ops.mmd_block_sums, (X, Y, -H, "laplace", 1.0, 1e-8), ValueError, "bandwidth must be positive and finite"),
    (ops.mmd_block_sums, (X, Y, H * math.nan, "gaussian", 1.0, 1e-8), ValueError, "bandwidth must be positive"),
    (ops.mmd_block_sums, (X, Y, H, "rbf", 1.0, 1e-8), ValueError, "kernel must be one of"),
    (ops.mmd_block_sums, (X, Y, H, "laplace", math.inf, 1e-8), ValueError, "distance_scale must be a finite"),
    (ops.mmd_block_sums, (X, Y, H, "laplace", 0.0, 1e-8), ValueError, "distance_scale must be a finite number > 0"),
    (ops.mmd_block_sums, (X, Y, H, "laplace", 1e39, 1e-8), ValueError, "distance_scale .* inf in float32"),
    (ops.mmd_block_sums, (X, Y, H, "laplace", 1.0, -1.0), ValueError, "eps must be a finite number >= 0"),
    (ops.mmd_block_sums, (X, Y, H, "laplace", 1.0, math.nan), ValueError, "eps must be"),
    (ops.mmd_block_sums, (X, Y, H, "laplace", 1.0, 1e39), ValueError, "eps .* inf in float32"),
    (ops.mmd_block_sums, (X, Y.double(), H, "laplace", 1.0, 1e-8), TypeError, "y must have the dtype of x"),
    (ops.mmd_block_sums, (X.int(), Y.int(), H, "laplace", 1.0, 1e-8), TypeError, "x must be float32"),
    (ops.mmd_block_sums, (X[0], Y[0], H, "laplace", 1.0, 1e-8), ValueError, "x must have shape \\(G, N, D\\)"),
    (ops.mmd_block_sums, (X, Y[:1], H, "laplace", 1.0, 1e-8), ValueError, "number of sets G"),
    (ops.mmd_block_sums, (X, Y[..., :2], H, "laplace", 1.0, 1e-8), ValueError, "dimension D"),
    (ops.mmd_block_sums, (X, Y[:, :0], H, "laplace", 1.0, 1e-8), ValueError, "M >= 1"),
    (ops.mmd_block_sums, (X, Y.to("meta"), H, "laplace", 1.0, 1e-8), ValueError, "y must be on the device"),
    (ops.pairwise_kernel_matrix, (X, Y, torch.ones(3, 1), "imq", 1.0, 1e-8), ValueError, "G = 2"),
    (ops.pairwise_kernel_matrix, (X, Y, torch.ones(2), "imq", 1.0, 1e-8), ValueError, "\\(G, K\\) table"),
    (ops.pair_gradient, (X, X, torch.ones(2, 4, 3), None, None, H, "laplace", 1.0, 1e-8), ValueError,
     "weight0 must have shape \\(G, R, C\\)"),
    (ops.pair_gradient, (X, X, torch.ones(2, 4, 4).double(), None, None, H, "laplace", 1.0, 1e-8), TypeError,
     "weight0 must be float32"),
    (ops.pair_gradient, (X, Y, torch.ones(2, 4, 5), X, None, H, "laplace", 1.0, 1e-8), ValueError,
     "cols1 and weight1"),
    (ops.pair_gradient, (X, Y, torch.ones(2, 4, 5), Y, torch.ones(2, 4, 4), H, "laplace", 1.0, 1e-8), ValueError,
     "weight1 must have shape"),
    (ops.pair_gradient, (X, Y[:, :, :2], torch.ones(2, 4, 5), None, None, H, "laplace", 1.0, 1e-8), ValueError,
     "rows and cols0 must have the same dimension D"),
    (ops.pair_gradient, (XW, XW, torch.ones(2, 4, 4), None, None, H, "laplace", 1.0, 1e-8, torch.ones(2, 4, 5)),
     ValueError, "distances must have shape \\(G, R, C0 \\+ C1\\)"),
    (ops.pair_gradient, (XW, XW, torch.ones(2, 4, 4), None, None, H, "laplace", 1.0, 1e-8,
                         torch.ones(2, 4, 4).double()), TypeError, "distances must be float32"),
    (ops.pair_gradient, (X, X, torch.ones(2, 4, 4), None, None, H, "laplace", 1.0, 1e-8, torch.ones(2, 4, 4)),
     ValueError, "distances are kept only for D > 64"),
    # imm_ext::attention_*
    (ops.attention_forward, (Q, K[:, :, :, :3], K, 0.5), ValueError, "k must have shape"),
    (ops.attention_forward, (Q, K, K[:, :, :4], 0.5), ValueError, "v must have the shape of k"),
    (ops.attention_forward, (Q, K, K.double(), 0.5), TypeError, "v must have the dtype of q"),
    (ops.attention_forward, (Q, K[:, :, :0], K[:, :, :0], 0.5), ValueError, "k must have B, H, T, Dh >= 1"),
    (ops.attention_forward, (Q, K, K.to("meta"), 0.5), ValueError, "v must be on the device of q"),
    (ops.attention_forward, (Q.long(), K.long(), K.long(), 0.5), TypeError, "q must be float32"),
    (ops.attention_inference, (Q, K, K, math.nan), ValueError, "scale must be a finite"),
    (ops.attention_inference, (Q.half(), K.half(), K.half(), 1e39), ValueError, "scale .* inf in float32"),
    (ops.attention_inference, (Q[0], K[0], K[0], 0.5), ValueError, "q must have shape \\(B, H, T, Dh\\)"),
    (ops.attention_inference, (torch.randn(1, 1, 2, 129),) * 3 + (0.1,), ValueError, "larger than the supported"),
    (ops.attention_backward, (Q, Q, K, K, Q, LSE[:, :, :2], 0.5), ValueError, "lse must have shape"),
    (ops.attention_backward, (Q, Q, K, K, Q, LSE.double(), 0.5), TypeError, "lse must be float32"),
    (ops.attention_backward, (Q[:, :, :2], Q, K, K, Q, LSE, 0.5), ValueError, "grad_out must have the shape of q"),
    (ops.attention_backward, (Q, Q, K, K, Q.double(), LSE, 0.5), TypeError, "out must have the dtype of q"),
    # imm_ext::norm_modulate(_backward), gate_residual(_backward)
    (ops.norm_modulate, (A, V[:1], V, False, 1e-6), ValueError, "shift must have shape"),
    (ops.norm_modulate, (A, V, V.double(), False, 1e-6), TypeError, "scale must have the dtype of x"),
    (ops.norm_modulate, (A, V, V, True, 0.0), ValueError, "eps must be a finite number > 0"),
    (ops.norm_modulate, (A, V, V, False, 1e-50), ValueError, "eps .* 0.0 in float32"),
    (ops.norm_modulate, (A.bfloat16(), V.bfloat16(), V.bfloat16(), False, 1e-46), ValueError, "eps .* float32"),
    (ops.norm_modulate, (A[0, 0], V, V, False, 1e-6), ValueError, "x must have shape \\(B, ..., C\\)"),
    (ops.norm_modulate_backward, (A, A, torch.zeros(5, 2), V, False, 1e-6), ValueError, "stats must have shape"),
    (ops.norm_modulate_backward, (A, A, torch.zeros(6, 2).double(), V, False, 1e-6), TypeError, "stats must be"),
    (ops.norm_modulate_backward, (A[:1], A, torch.zeros(6, 2), V, False, 1e-6), ValueError, "grad must have the shape"),
    (ops.gate_residual, (A, V, A[:, :2]), ValueError, "y must have the shape of x"),
    (ops.gate_residual, (A, V[:, :3], A), ValueError, "gate must have shape"),
    (ops.gate_residual, (A, V, A.double()), TypeError, "y must have the dtype of x"),
    (ops.gate_residual_backward, (A[:, :1], V, A), ValueError, "grad must have the shape of y"),
    (ops.gate_residual_backward, (A, V[:1], A), ValueError, "gate must have shape"),
    # imm_ext::timestep_embedding(_backward), gelu_tanh(_backward)
    (ops.timestep_embedding, (C.float(), 8, 1e4, torch.float32), TypeError, "c must be float64"),
    (ops.timestep_embedding, (C, 0, 1e4, torch.float32), ValueError, "dim must be a positive int"),
    (ops.timestep_embedding, (C, 8, 0.0, torch.float32), ValueError, "max_period must be a finite number > 0"),
    (ops.timestep_embedding, (C, 8, math.inf, torch.float32), ValueError, "max_period"),
    (ops.timestep_embedding, (C, 8, 1e4, torch.int32), TypeError, "dtype must be"),
    (ops.timestep_embedding, (C[None], 8, 1e4, torch.float32), ValueError, "c must have shape \\(B,\\)"),
    (ops.timestep_embedding_backward, (torch.ones(2, 8), C, 1e4), ValueError, "grad must have shape \\(B, dim\\)"),
    (ops.timestep_embedding_backward, (torch.ones(3, 8), C, -1.0), ValueError, "max_period"),
    (ops.gelu_tanh, (torch.ones(3, dtype=torch.int32),), TypeError, "x must be float32"),
    (ops.gelu_tanh_backward, (torch.ones(2), torch.ones(3)), ValueError, "grad must have the shape of x"),
    (ops.gelu_tanh_backward, (torch.ones(3).to("meta"), torch.ones(3)), ValueError, "grad must be on the device"),
    # imm_ext::interpolant_pair, sampler_step
    (ops.interpolant_pair, (XS, XS, COEF[:2], 2), ValueError, "coefficients must have shape"),
    (ops.interpolant_pair, (XS, XS, COEF, 4), ValueError, "divisible by particles"),
    (ops.interpolant_pair, (XS, XS, COEF, 0), ValueError, "particles must be a positive int"),
    (ops.interpolant_pair, (XS, XS[:5], COEF, 2), ValueError, "noise must have the shape of x"),
    (ops.interpolant_pair, (XS, XS.double(), COEF, 2), TypeError, "noise must have the dtype of x"),
    (ops.interpolant_pair, (XS, XS, COEF.float(), 2), TypeError, "coefficients must be float64"),
    (ops.interpolant_pair, (XS, XS, COEF.clone().fill_(math.inf), 2), ValueError, "alpha_t must be finite"),
    (ops.sampler_step, (XS, XS, None, C6[:5], C6, 1.0), ValueError, "c_skip must have shape"),
    (ops.sampler_step, (XS, XS, None, C6, C6.float(), 1.0), TypeError, "c_out must be float64"),
    (ops.sampler_step, (XS, XS[:3], None, C6, C6, 1.0), ValueError, "g_cond must have the shape of x"),
    (ops.sampler_step, (XS, XS, XS[:, :2], C6, C6, 1.0), ValueError, "g_uncond must have the shape of x"),
    (ops.sampler_step, (XS, XS, XS, C6, C6, math.nan), ValueError, "guidance must be a finite"),
    (ops.sampler_step, (XS, XS, XS, C6, C6, 1e39), ValueError, "guidance .* inf in float32"),
    (ops.sampler_step, (XS, XS, None, C6 * math.nan, C6, 1.0), ValueError, "c_skip must be finite"),
]


@pytest.mark.parametrize("op,args,error,match", BAD_DIRECT_CALLS,
                         ids=[f"{c[0]._qualified_op_name}-{i}" for i, c in enumerate(BAD_DIRECT_CALLS)])
def test_direct_calls_of_registered_ops_validate(op, args, error, match):
    with pytest.raises(error, match=match):
        op(*args)


@pytest.mark.parametrize("op,args,error,match", [c for c in BAD_DIRECT_CALLS if "must be finite" not in c[3]
                                                 and "must be positive" not in c[3]][::7])
def test_fake_kernels_validate_metadata(op, args, error, match):
    """The fake kernels run the same metadata checks (so compiled graphs fail when traced)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fakes = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(error, match=match):
            op(*fakes)


# ---------------------------------------------------------------------------------------------
# Scalars in the dtype they are used in

@pytest.mark.parametrize("call,match", [
    (lambda: imm_ext.mmd_loss(X, Y, bandwidth=1e-46, eps=0), r"bandwidth must be positive and finite \(in float32"),
    (lambda: imm_ext.mmd_loss(X, Y, bandwidth=torch.tensor([1e-46, 1.0], dtype=torch.float64)),
     "bandwidth must be positive and finite"),
    (lambda: imm_ext.mmd_loss(X, Y, bandwidth=1e39), r"bandwidth must be positive and finite \(in float32"),
    (lambda: imm_ext.mmd_loss(X.half(), Y.half(), bandwidth=[1.0, 1e-50]), "bandwidth .*float32"),
    (lambda: imm_ext.pairwise_kernel(X, Y, kernel="gaussian", bandwidth=1e-46), "bandwidth"),
    (lambda: imm_ext.mmd_terms(X, Y, distance_scale=1e-50), "distance_scale .* 0.0 in float32"),
    (lambda: imm_ext.mmd_loss(X, Y, eps=1e39), "eps .* inf in float32"),
    (lambda: imm_ext.ops.norm_modulate(A, V, V, eps=1e-50), "eps .* 0.0 in float32"),
    (lambda: imm_ext.ops.norm_modulate(A.half(), V.half(), V.half(), norm="rms", eps=1e-50), "eps"),
    (lambda: attention(Q, K, K, scale=1e39), "scale .* inf in float32"),
    (lambda: imm_ext.ops.sampler_step(XS, XS, C6, C6, g_uncond=XS, guidance=-1e39), "guidance .* float32"),
    (lambda: imm_ext.ops.timestep_embedding(C, 8, max_period=math.nan), "max_period"),
])
def test_scalars_are_checked_in_the_dtype_they_are_used_in(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_float64_keeps_scalars_that_float32_cannot_hold():
    x, y = random_sets(2, 4, 5, 3, dtype=torch.float64)
    loss = imm_ext.mmd_loss(x, y, bandwidth=1e-300, eps=0)
    assert torch.isfinite(loss)
    assert torch.isfinite(imm_ext.ops.norm_modulate(A.double(), V.double(), V.double(), eps=1e-300)).all()


def test_eps_zero_is_allowed_where_documented():
    assert torch.isfinite(imm_ext.mmd_loss(X, X, eps=0.0, kernel="energy"))
    assert torch.isfinite(imm_ext.mmd_loss(X, Y, eps=1e-50))  # rounds to eps = 0: allowed for MMD
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        imm_ext.ops.norm_modulate(A, V, V, eps=0.0)


# ---------------------------------------------------------------------------------------------
# Value checks under torch.compile

@pytest.mark.parametrize("options", [dict(), dict(dynamic=True), dict(fullgraph=True)])
def test_compiled_bad_bandwidth_raises_the_eager_error(options):
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b, h: imm_ext.mmd_loss(a, b, bandwidth=h), **options)
    with pytest.raises(Exception, match="bandwidth must be positive and finite"):
        fn(X, Y, torch.tensor([1.0, -1.0]))
    with pytest.raises(Exception, match="bandwidth must be positive and finite"):
        fn(X, Y, torch.tensor([math.nan, 1.0]))
    torch.testing.assert_close(fn(X, Y, torch.tensor([1.0, 2.0])),
                               imm_ext.mmd_loss(X, Y, bandwidth=torch.tensor([1.0, 2.0])))


def test_compiled_bad_coefficients_and_scalars_raise():
    torch._dynamo.reset()
    step = torch.compile(lambda x, c: imm_ext.ops.sampler_step(x, x, c, c), fullgraph=True)
    with pytest.raises(Exception, match="c_skip must be finite"):
        step(XS, C6 * math.inf)
    norm = torch.compile(lambda x, v, e: imm_ext.ops.norm_modulate(x, v, v, eps=e), dynamic=True)
    with pytest.raises(Exception, match="eps"):
        norm(A, V, 1e-50)


def test_compile_dynamic_matches_eager_for_every_public_op():
    torch._dynamo.reset()

    def everything(x, y, h, q, k, a, v, c, xs, c6, s, e):
        return (imm_ext.mmd_loss(x, y, bandwidth=h, eps=e, distance_scale="dim"),
                imm_ext.mmd_terms(x, y, bandwidth=s, kernel="imq"),
                imm_ext.pairwise_kernel(x, y, kernel="gaussian", bandwidth=[s, 2.0], distance_scale=s),
                attention(q, k, k, scale=s), attention(q, k, k),
                imm_ext.ops.norm_modulate(a, v, v, eps=e), imm_ext.ops.gate_residual(a, v, a),
                imm_ext.ops.gelu_tanh(a), *imm_ext.ops.timestep_embedding_pair(c, c, 8, max_period=s * 1e4),
                *imm_ext.ops.interpolant_pair(xs, xs, c[:3], c[:3], c[:3], c[:3], 2),
                imm_ext.ops.sampler_step(xs, xs, c6, c6, g_uncond=xs, guidance=s))

    args = (X, Y, torch.tensor([1.0, 2.0]), Q, K, A, V, C, XS, C6)
    compiled = torch.compile(everything, dynamic=True, fullgraph=True)
    for s, e in ((0.5, 1e-6), (0.75, 1e-5)):
        for got, expected in zip(compiled(*args, s, e), everything(*args, s, e)):
            torch.testing.assert_close(got, expected)
    x2, y2 = random_sets(3, 6, 2, 5, dtype=torch.float32)  # other sizes: the same graph (dynamic)
    torch.testing.assert_close(compiled(x2, y2, torch.ones(3), *args[3:], 0.5, 1e-6)[0],
                               imm_ext.mmd_loss(x2, y2, bandwidth=torch.ones(3), eps=1e-6, distance_scale="dim"))
