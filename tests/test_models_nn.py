"""imm_ext.nn building blocks: outputs equal a stock-layer implementation with the same weights, adaLN-Zero
starts at zero, attention backends agree, qk-norm / RMS variants, embeddings, and bad arguments."""
import math

import pytest
import torch
from torch import nn

from imm_ext.nn import (AdaLNModulation, LabelEmbedder, ModulatedAttention, ModulatedMLP, ModulatedOutput,
                        SelfAttention, StockModulatedAttention, StockModulatedMLP, TimePairEmbedder, functional)
from conftest import TOLERANCE


def randomize(module, std=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def conditioning(batch=3, tokens=7, dim=16, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=gen, dtype=torch.float64).to(dtype)
    shift, scale, gate = (0.5 * torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    return x, shift, scale, gate


class StockAttentionBlock(nn.Module):
    """The DiT attention half as one would write it with stock layers (the test's independent baseline)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, shift, scale, gate):
        b, t, c = x.shape
        h = self.norm(x) * (1 + scale[:, None]) + shift[:, None]
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        return x + gate[:, None] * self.proj(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modulated_attention_matches_stock_layers(dtype):
    ours = randomize(ModulatedAttention(16, heads=4)).to(dtype)
    stock = StockAttentionBlock(16, 4).to(dtype)
    stock.qkv.load_state_dict(ours.attention.qkv.state_dict())
    stock.proj.load_state_dict(ours.attention.proj.state_dict())
    inputs = conditioning(dtype=dtype)
    torch.testing.assert_close(ours(*inputs), stock(*inputs), **TOLERANCE[dtype])


def test_modulated_mlp_matches_stock_layers():
    ours = randomize(ModulatedMLP(16, 40)).double()
    x, shift, scale, gate = conditioning(dtype=torch.float64)
    h = nn.LayerNorm(16, elementwise_affine=False, eps=1e-6).double()(x) * (1 + scale[:, None]) + shift[:, None]
    expected = x + gate[:, None] * ours.fc2(nn.GELU(approximate="tanh")(ours.fc1(h)))
    torch.testing.assert_close(ours(x, shift, scale, gate), expected, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_imm_ext_layers_equal_their_stock_twins_and_backends_agree(norm, qk_norm):
    inputs = conditioning()
    for backend in ("imm_ext", "sdpa", "auto"):
        ours = randomize(ModulatedAttention(16, 2, norm=norm, qk_norm=qk_norm, attention_backend=backend))
        stock = StockModulatedAttention(16, 2, norm=norm, qk_norm=qk_norm)
        stock.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(*inputs), stock(*inputs), **TOLERANCE[torch.float32])
    mlp = randomize(ModulatedMLP(16, 32, norm=norm))
    stock_mlp = StockModulatedMLP(16, 32, norm=norm)
    stock_mlp.load_state_dict(mlp.state_dict())
    torch.testing.assert_close(mlp(*inputs), stock_mlp(*inputs), **TOLERANCE[torch.float32])


def test_rms_norm_and_qk_norm_compute_what_they_say():
    x, shift, scale, gate = conditioning(dtype=torch.float64)
    head = randomize(ModulatedOutput(16, 5, norm="rms")).double()
    normed = x / x.square().mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(head(x, shift, scale), head.linear(normed * (1 + scale[:, None]) + shift[:, None]))
    attention = randomize(SelfAttention(16, 4, qk_norm=True)).double()
    q, k, _ = attention.split_heads(x)
    rms = q / attention.q_norm
    torch.testing.assert_close(rms.square().mean(-1), torch.ones_like(rms[..., 0]), rtol=1e-4, atol=1e-6)


def test_attention_takes_strided_qkv_views_and_matches_the_softmax_formula():
    attention = randomize(SelfAttention(12, 3)).double()
    x = conditioning(tokens=5, dim=12, dtype=torch.float64)[0]
    q, k, v = attention.split_heads(x)
    assert not q.is_contiguous() and q.stride(-1) == 1
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1) @ v
    for backend in functional.ATTENTION_BACKENDS:
        torch.testing.assert_close(functional.attention(q, k, v, backend=backend), expected)


def test_adaln_modulation_starts_at_zero_and_splits_chunks():
    modulation = AdaLNModulation(8, 16, chunks=6)
    chunks = modulation(torch.randn(3, 8))
    assert len(chunks) == 6 and all(c.shape == (3, 16) and torch.equal(c, torch.zeros_like(c)) for c in chunks)
    x, _, _, _ = conditioning()
    block = ModulatedAttention(16, 4)
    assert torch.equal(block(x, *chunks[:3]), x)  # gate 0: the residual branch is off


def test_time_pair_embedder_sums_two_mlps_over_sinusoids():
    embedder = randomize(TimePairEmbedder(8, 12)).double()
    c_t, c_s = torch.tensor([0.0, 994.0, 500.5], dtype=torch.float64), torch.tensor([0.0, 3.0, 250.0], dtype=torch.float64)
    frequencies = 10_000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)

    def sinusoids(c):
        return torch.cat([torch.cos(c[:, None] * frequencies), torch.sin(c[:, None] * frequencies)], 1)

    offset = torch.randn(3, 8, dtype=torch.float64)
    expected = embedder.embed_t(sinusoids(c_t) + offset) + embedder.embed_s(sinusoids(c_s))
    torch.testing.assert_close(embedder(c_t, c_s, t_offset=offset), expected)


def test_label_embedder_has_a_null_row():
    embedder = LabelEmbedder(3, 5)
    assert embedder.table.weight.shape == (4, 5)
    torch.testing.assert_close(embedder(torch.tensor([3])), embedder.table.weight[3:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="attention_backend"):
        ModulatedAttention(16, 4, attention_backend="flash")
    with pytest.raises(ValueError, match="norm"):
        ModulatedMLP(16, 32, norm="batch")
    with pytest.raises(ValueError, match="heads"):
        SelfAttention(16, 5)
    with pytest.raises(ValueError, match="attention_backend"):
        functional.attention(*[torch.zeros(1, 1, 2, 4)] * 3, backend="xformers")
