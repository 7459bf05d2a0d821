"""The DiT: shapes for every patch size and batch size, G = 0 at initialisation (adaLN-Zero), seeded
initialisation, gradients to every parameter, bf16 autocast, the stock-layer twin, the fixed position
embedding, preset parameter counts (meta device) and bad input."""
import pytest
import torch

from conftest import assert_trains_and_reads_every_input
from imm_ext.models import DiT
from imm_ext.models.dit import PRESETS, sincos_position_embedding

TINY = dict(input_size=8, in_channels=3, hidden_size=32, depth=2, heads=4, num_classes=5)


def inputs(batch=3, channels=3, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, size, size, generator=gen), 1000 * torch.rand(batch, generator=gen),
            1000 * torch.rand(batch, generator=gen), torch.randint(0, 6, (batch,), generator=gen))


def perturb_zero_init(model, seed=0):
    """Give the adaLN-Zero layers (all modulations and the output Linear) small random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("final."):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("patch_size", [2, 4, 8])
@pytest.mark.parametrize("batch", [1, 4])
def test_shapes_and_zero_output_at_init(patch_size, batch):
    model = DiT(patch_size=patch_size, **TINY)
    x, c_t, c_s, labels = inputs(batch)
    out = model(x, c_t, c_s, labels)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    assert f"parameters={sum(p.numel() for p in model.parameters()):,}" in repr(model)


def test_out_channels_and_unconditional():
    model = perturb_zero_init(DiT(**{**TINY, "num_classes": 0}, out_channels=2))
    x, c_t, c_s, _ = inputs()
    assert model.embed_label is None and model(x, c_t, c_s).shape == (3, 2, 8, 8)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = DiT(seed=1, **TINY), DiT(seed=1, **TINY), DiT(seed=2, **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.blocks[0].attention.attention.qkv.weight, c.blocks[0].attention.attention.qkv.weight)


def test_initialisation_follows_adaln_zero():
    model = DiT(**TINY)
    assert not any(name == "position_embedding" for name, _ in model.named_parameters())
    assert "position_embedding" not in model.state_dict()
    for block in model.blocks:
        assert not block.modulation.linear.weight.any() and not block.modulation.linear.bias.any()
        assert not block.mlp.fc1.bias.any()
    assert not model.final.linear.weight.any() and not model.final_modulation.linear.weight.any()
    assert 0.01 < model.embed_label.table.weight.std() < 0.03
    assert 0.01 < model.embed_time.embed_s.mlp[2].weight.std() < 0.03


def test_gradients_reach_every_parameter_and_all_inputs_matter():
    model = perturb_zero_init(DiT(qk_norm=True, **TINY))
    x, c_t, c_s, labels = inputs(batch=6)
    labels = torch.arange(6)  # every class and the null class 5
    assert_trains_and_reads_every_input(model, x, c_t, c_s, labels, 6)


def test_stock_layers_give_the_same_network():
    for options in (dict(), dict(norm="rms", qk_norm=True)):
        ours = perturb_zero_init(DiT(**TINY, **options))
        stock = DiT(**TINY, **options, layers="stock")
        stock.load_state_dict(ours.state_dict())
        args = inputs()
        torch.testing.assert_close(ours(*args), stock(*args), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_runs():
    model = perturb_zero_init(DiT(**TINY))
    args = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*args)
    assert out.shape == args[0].shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(*args), rtol=0.1, atol=0.05)


def test_patches_and_tokens_keep_their_places():
    """With identity-like weights the output pixel (c, i, j) comes from the input pixel (c, i, j)."""
    model = DiT(patch_size=2, input_size=4, in_channels=1, hidden_size=4, depth=1, heads=1, num_classes=0)
    with torch.no_grad():
        model.patch_embedding.weight.zero_()
        for k in range(4):  # hidden channel k holds the patch pixel (k // 2, k % 2)
            model.patch_embedding.weight[k, 0, k // 2, k % 2] = 1
        model.final.linear.weight.copy_(torch.eye(4))
        model.position_embedding.zero_()
        block = model.blocks[0]
        block.modulation.linear.bias.zero_()
    # layer norm changes values but not positions: compare the argmax pixel per image
    x = torch.zeros(16, 1, 4, 4)
    x.view(16, -1)[torch.arange(16), torch.arange(16)] = 5.0
    out = model(x, torch.zeros(16), torch.zeros(16))
    assert torch.equal(out.view(16, -1).argmax(1), torch.arange(16))


def test_position_embedding_encodes_column_then_row():
    table = sincos_position_embedding(8, 3)  # frequencies 10000^(-k / 2): 1 and 0.01
    assert table.shape == (9, 8)

    def encode(pos):
        angles = torch.tensor([pos * 1.0, pos * 0.01], dtype=torch.float64)
        return torch.cat([angles.sin(), angles.cos()])

    row, column = 1, 2
    torch.testing.assert_close(table[row * 3 + column], torch.cat([encode(column), encode(row)]))


@pytest.mark.parametrize("name, millions", [("S/2", 33), ("B/2", 130), ("L/2", 458), ("XL/2", 675)])
def test_presets_have_the_papers_parameter_counts(name, millions):
    with torch.device("meta"):
        model = DiT.from_preset(name, input_size=32, in_channels=4, num_classes=1000)
        assert DiT.from_preset(name.replace("/2", "/8"), input_size=32).patch_size == 8
    # the paper's counts (Table 5) plus IMM's second time embedder (256 * H + H * H + 2 H)
    hidden = model.config["hidden_size"]
    count = sum(p.numel() for p in model.parameters()) - (256 * hidden + hidden * hidden + 2 * hidden)
    assert abs(count / 1e6 - millions) / millions < 0.01
    assert len(PRESETS) == 12


def test_bad_input():
    with pytest.raises(ValueError, match="patch_size"):
        DiT(patch_size=3, **TINY)
    with pytest.raises(ValueError, match="patch_size must divide"):
        DiT(patch_size=4, **{**TINY, "input_size": 6})
    with pytest.raises(ValueError, match="heads"):
        DiT(**{**TINY, "heads": 3})
    with pytest.raises(ValueError, match="layers"):
        DiT(**TINY, layers="fast")
    with pytest.raises(ValueError, match="preset"):
        DiT.from_preset("M/2")
    model = DiT(**TINY)
    x, c_t, c_s, labels = inputs()
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :2], c_t, c_s, labels)
    with pytest.raises(ValueError, match="c_s must have shape"):
        model(x, c_t, c_s[:2], labels)
    with pytest.raises(ValueError, match="labels must be given"):
        model(x, c_t, c_s)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\]"):
        model(x, c_t, c_s, torch.tensor([0, 6, 1]))
    with pytest.raises(TypeError, match="labels"):
        model(x, c_t, c_s, labels.float())
