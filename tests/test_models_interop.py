"""Loading the IMM authors' DiT and SongUNet state dicts (imm_ext.models.interop).

The authors' formats are written out here from reading their published model definitions (lumalabs/imm
training/dit.py and training/unets.py, EDM's SongUNet with an s-embedding): key names and shapes, and
a functional re-implementation of their forward passes in their own conventions (one-hot labels, the
stored pos_embed, [sin, cos] positional features, interleaved qkv channels, resampling by the stored
filters). A synthetic state dict in that format, loaded into imm_ext's model, must give the same G; wrong
or truncated state dicts must be rejected with every problem listed.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imm_ext.models import DiT, UNet, load_authors_state_dict
from imm_ext.models.interop import convert_authors_state_dict

# ---------------------------------------------------------------------------------------------------------
# The authors' DiT


DIT = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, heads=2, num_classes=4)


def authors_pos_embed(dim, grid):
    """MAE's 2-D sin-cos table as the authors build it: np.meshgrid(w, h) -> first half from grid[0] (the
    column), second half from grid[1] (the row), each [sin, cos] with omega = 1 / 10000^(k / (dim / 4))."""
    w_coords, h_coords = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def one_dim(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([one_dim(w_coords), one_dim(h_coords)], axis=1)).float()[None]


def authors_dit_shapes(input_size, patch_size, in_channels, hidden_size, depth, heads, num_classes):
    h, p, c = hidden_size, patch_size, in_channels
    shapes = {"x_embedder.proj.weight": (h, c, p, p), "x_embedder.proj.bias": (h,),
              "pos_embed": (1, (input_size // p) ** 2, h),
              "y_embedder.embedding_table.weight": (num_classes + 1, h),
              "final_layer.adaLN_modulation.1.weight": (2 * h, h), "final_layer.adaLN_modulation.1.bias": (2 * h,),
              "final_layer.linear.weight": (p * p * c, h), "final_layer.linear.bias": (p * p * c,)}
    for embedder in ("t_embedder", "s_embedder"):
        shapes.update({f"{embedder}.mlp.0.weight": (h, 256), f"{embedder}.mlp.0.bias": (h,),
                       f"{embedder}.mlp.2.weight": (h, h), f"{embedder}.mlp.2.bias": (h,)})
    for i in range(depth):
        for name, shape in (("adaLN_modulation.1", (6 * h, h)), ("attn.qkv", (3 * h, h)), ("attn.proj", (h, h)),
                            ("mlp.fc1", (4 * h, h)), ("mlp.fc2", (h, 4 * h))):
            shapes[f"blocks.{i}.{name}.weight"] = shape
            shapes[f"blocks.{i}.{name}.bias"] = shape[:1]
    return shapes


def random_state_dict(shapes, seed=0, fixed=()):
    gen = torch.Generator().manual_seed(seed)
    return {key: fixed[key] if key in fixed else 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
            for key, shape in shapes.items()}


def authors_dit_state_dict(seed=0, **config):
    config = {**DIT, **config}
    grid = config["input_size"] // config["patch_size"]
    return random_state_dict(authors_dit_shapes(**config), seed,
                             fixed={"pos_embed": authors_pos_embed(config["hidden_size"], grid)})


def authors_dit_forward(sd, x, noise_t, noise_s, one_hot, patch_size, heads, depth):
    """The authors' DiT.forward, in float64."""
    sd = {k: v.double() for k, v in sd.items()}

    def linear(h, name):
        return h @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]

    def modulate(h, shift, scale):
        return F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    def timestep(name, n):
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
        args = n.double()[:, None] * freqs[None]
        return linear(F.silu(linear(torch.cat([args.cos(), args.sin()], -1), f"{name}.mlp.0")), f"{name}.mlp.2")

    tokens = F.conv2d(x.double(), sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch_size)
    tokens = tokens.flatten(2).transpose(1, 2) + sd["pos_embed"]
    y = torch.cat([one_hot, 1 - one_hot.sum(1, keepdim=True)], 1).argmax(1)
    c = timestep("t_embedder", noise_t) + timestep("s_embedder", noise_s) + sd["y_embedder.embedding_table.weight"][y]
    b, t, h = tokens.shape
    for i in range(depth):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = linear(F.silu(c), f"blocks.{i}.adaLN_modulation.1").chunk(6, 1)
        q, k, v = linear(modulate(tokens, shift_a, scale_a), f"blocks.{i}.attn.qkv").reshape(
            b, t, 3, heads, h // heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // heads), -1) @ v
        tokens = tokens + gate_a[:, None] * linear(attention.transpose(1, 2).reshape(b, t, h), f"blocks.{i}.attn.proj")
        hidden = F.gelu(linear(modulate(tokens, shift_m, scale_m), f"blocks.{i}.mlp.fc1"), approximate="tanh")
        tokens = tokens + gate_m[:, None] * linear(hidden, f"blocks.{i}.mlp.fc2")
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, 1)
    out = linear(modulate(tokens, shift, scale), "final_layer.linear")
    grid, channels = int(math.isqrt(t)), out.shape[-1] // patch_size ** 2
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(b, grid, grid, patch_size, patch_size, channels))
    return out.reshape(b, channels, grid * patch_size, grid * patch_size)


def test_dit_loads_every_key_and_computes_the_authors_g():
    sd = authors_dit_state_dict()
    model = load_authors_state_dict(DiT(**DIT).double(), {f"model.{k}": v for k, v in sd.items()})  # wrapper prefix
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    noise_t, noise_s = 994 * torch.rand(5, generator=gen), 994 * torch.rand(5, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4])  # 4: the null class, an all-zero one-hot for the authors
    one_hot = F.one_hot(labels, 5)[:, :4].double()
    expected = authors_dit_forward(sd, x, noise_t, noise_s, one_hot, patch_size=2, heads=2, depth=2)
    torch.testing.assert_close(model(x, noise_t.double(), noise_s.double(), labels), expected, rtol=1e-7, atol=1e-7)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


def test_dit_presets_match_the_authors_key_count():
    with torch.device("meta"):
        model = DiT.from_preset("XL/2", input_size=32, in_channels=4, num_classes=1000)
    shapes = authors_dit_shapes(32, 2, 4, 1152, 28, 16, 1000)
    parameters = sum(math.prod(shape) for key, shape in shapes.items() if key != "pos_embed")
    assert parameters == sum(p.numel() for p in model.parameters())


def test_dit_rejects_wrong_state_dicts():
    model = DiT(**DIT)
    sd = authors_dit_state_dict()
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks.1.attn.proj.bias"):
        convert_authors_state_dict(model, {k: v for k, v in sd.items() if k != "blocks.1.attn.proj.bias"})
    truncated = dict(list(sd.items())[: len(sd) // 2])
    with pytest.raises(ValueError, match="missing keys"):
        convert_authors_state_dict(model, truncated)
    with pytest.raises(ValueError, match=r"unknown keys \(2\): blocks.0.attn.k_norm.weight, blocks.0.attn.q_norm.weight"):
        convert_authors_state_dict(model, {**sd, "blocks.0.attn.q_norm.weight": torch.ones(8),
                                           "blocks.0.attn.k_norm.weight": torch.ones(8)})
    with pytest.raises(ValueError, match=r"wrong shape \(1\): y_embedder.embedding_table.weight \(6, 16\)"):
        convert_authors_state_dict(model, {**sd, "y_embedder.embedding_table.weight": torch.zeros(6, 16)})
    with pytest.raises(ValueError, match="fixed buffers.*pos_embed"):
        convert_authors_state_dict(model, {**sd, "pos_embed": sd["pos_embed"] + 0.1})
    with pytest.raises(ValueError, match="qk_norm=True"):
        convert_authors_state_dict(DiT(**DIT, qk_norm=True), sd)
    with pytest.raises(ValueError, match="unknown keys"):
        convert_authors_state_dict(DiT(**{**DIT, "num_classes": 0}), sd)
    with pytest.raises(TypeError, match="state_dict"):
        convert_authors_state_dict(model, {"x_embedder.proj.bias": [0.0] * 16})
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError):
        load_authors_state_dict(model, truncated)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing half-loaded


# ---------------------------------------------------------------------------------------------------------
# The authors' SongUNet (DDPM++ with s-embedding)

UNET = dict(resolution=8, in_channels=3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
            dropout=0.0, num_classes=4)
# Their blocks for UNET: (name, in, out, resample, attention), in forward order; the encoder's input conv
# (enc.8x8_conv) comes first and its output and every encoder block's output is a skip; decoder blocks
# whose input width differs from the running width concatenate the latest skip.
UNET_ENCODER = [("enc.8x8_block0", 16, 16, None, False), ("enc.4x4_down", 16, 16, "down", False),
                ("enc.4x4_block0", 16, 32, None, True)]
UNET_DECODER = [("dec.4x4_in0", 32, 32, None, True), ("dec.4x4_in1", 32, 32, None, False),
                ("dec.4x4_block0", 64, 32, None, False), ("dec.4x4_block1", 48, 32, None, True),
                ("dec.8x8_up", 32, 32, "up", False), ("dec.8x8_block0", 48, 16, None, False),
                ("dec.8x8_block1", 32, 16, None, False)]


def authors_unet_blocks(resolution, model_channels, channel_mult, num_blocks, attn_resolutions):
    """Their SongUNet.__init__ loops (standard encoder and decoder): the block tables as above."""
    encoder, widths, cout = [], [model_channels], model_channels
    for level, mult in enumerate(channel_mult):
        res = resolution >> level
        if level:
            encoder.append((f"enc.{res}x{res}_down", cout, cout, "down", False))
            widths.append(cout)
        for i in range(num_blocks):
            encoder.append((f"enc.{res}x{res}_block{i}", cout, model_channels * mult, None, res in attn_resolutions))
            cout = model_channels * mult
            widths.append(cout)
    decoder = []
    for level in reversed(range(len(channel_mult))):
        res = resolution >> level
        if level == len(channel_mult) - 1:
            decoder += [(f"dec.{res}x{res}_in0", cout, cout, None, True), (f"dec.{res}x{res}_in1", cout, cout, None, False)]
        else:
            decoder.append((f"dec.{res}x{res}_up", cout, cout, "up", False))
        for i in range(num_blocks + 1):
            cin, cout = cout + widths.pop(), model_channels * channel_mult[level]
            decoder.append((f"dec.{res}x{res}_block{i}", cin, cout, None, i == num_blocks and res in attn_resolutions))
    return encoder, decoder


def authors_unet_shapes(encoder, decoder, resolution=8, model_channels=16, emb=64, in_channels=3, label_dim=4):
    """Their key names and shapes; the mapping MLPs are map_layer0/1 (t) and map_layer0_s/1_s (s)."""
    res, out_width = resolution, decoder[-1][2]
    shapes = {f"enc.{res}x{res}_conv.weight": (model_channels, in_channels, 3, 3),
              f"enc.{res}x{res}_conv.bias": (model_channels,),
              f"dec.{res}x{res}_aux_norm.weight": (out_width,), f"dec.{res}x{res}_aux_norm.bias": (out_width,),
              f"dec.{res}x{res}_aux_conv.weight": (in_channels, out_width, 3, 3),
              f"dec.{res}x{res}_aux_conv.bias": (in_channels,)}
    for suffix in ("", "_s"):
        shapes.update({f"map_layer0{suffix}.weight": (emb, model_channels), f"map_layer0{suffix}.bias": (emb,),
                       f"map_layer1{suffix}.weight": (emb, emb), f"map_layer1{suffix}.bias": (emb,)})
    if label_dim:
        shapes.update({"map_label.weight": (model_channels, label_dim), "map_label.bias": (model_channels,)})
    for name, cin, cout, resample, attention in encoder + decoder:
        shapes.update({f"{name}.norm0.weight": (cin,), f"{name}.norm0.bias": (cin,),
                       f"{name}.conv0.weight": (cout, cin, 3, 3), f"{name}.conv0.bias": (cout,),
                       f"{name}.affine.weight": (cout, emb), f"{name}.affine.bias": (cout,),
                       f"{name}.norm1.weight": (cout,), f"{name}.norm1.bias": (cout,),
                       f"{name}.conv1.weight": (cout, cout, 3, 3), f"{name}.conv1.bias": (cout,)})
        if cin != cout or resample:
            shapes.update({f"{name}.skip.weight": (cout, cin, 1, 1), f"{name}.skip.bias": (cout,)})
        if resample:
            shapes.update({f"{name}.conv0.resample_filter": (1, 1, 2, 2), f"{name}.skip.resample_filter": (1, 1, 2, 2)})
        if attention:
            shapes.update({f"{name}.norm2.weight": (cout,), f"{name}.norm2.bias": (cout,),
                           f"{name}.qkv.weight": (3 * cout, cout, 1, 1), f"{name}.qkv.bias": (3 * cout,),
                           f"{name}.proj.weight": (cout, cout, 1, 1), f"{name}.proj.bias": (cout,)})
    return shapes


def authors_unet_state_dict(seed=0, label_dim=4):
    shapes = authors_unet_shapes(UNET_ENCODER, UNET_DECODER, label_dim=label_dim)
    filters = {key: torch.full(shape, 0.25) for key, shape in shapes.items() if key.endswith("resample_filter")}
    return random_state_dict(shapes, seed, fixed=filters)


def authors_unet_forward(sd, x, noise_t, noise_s, class_labels):
    """The authors' SongUNet.forward (DDPM++: standard encoder/decoder, [1, 1] filter, one head), float64."""
    sd = {k: v.double() for k, v in sd.items()}

    def linear(h, name):
        return h @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]

    def conv(h, name, resample=None):
        weight = sd[f"{name}.weight"]
        if resample == "down":
            f = sd[f"{name}.resample_filter"].tile([h.shape[1], 1, 1, 1])
            h = F.conv2d(h, f, groups=h.shape[1], stride=2)
        if resample == "up":
            f = (4 * sd[f"{name}.resample_filter"]).tile([h.shape[1], 1, 1, 1])
            h = F.conv_transpose2d(h, f, groups=h.shape[1], stride=2)
        return F.conv2d(h, weight, sd[f"{name}.bias"], padding=weight.shape[-1] // 2)

    def norm(h, name):
        return F.group_norm(h, min(32, h.shape[1] // 4), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    def positional(n):  # 16 channels, endpoint=True, then the [cos, sin] -> [sin, cos] swap
        freqs = (1 / 10000) ** (torch.arange(8, dtype=torch.float64) / 7)
        args = torch.outer(n.double(), freqs)
        return torch.cat([args.sin(), args.cos()], 1)

    emb = positional(noise_t)
    if class_labels is not None:
        emb = emb + linear(class_labels * math.sqrt(class_labels.shape[1]), "map_label")
    emb = linear(F.silu(linear(emb, "map_layer0")), "map_layer1")
    emb = emb + linear(F.silu(linear(positional(noise_s), "map_layer0_s")), "map_layer1_s")
    emb = F.silu(emb)

    def block(h, name, resample, attention):
        orig = h
        h = conv(F.silu(norm(h, f"{name}.norm0")), f"{name}.conv0", resample)
        h = F.silu(norm(h + linear(emb, f"{name}.affine")[:, :, None, None], f"{name}.norm1"))
        h = conv(h, f"{name}.conv1")
        h = (h + (conv(orig, f"{name}.skip", resample) if f"{name}.skip.weight" in sd else orig)) * math.sqrt(0.5)
        if attention:
            b, c, height, width = h.shape
            q, k, v = conv(norm(h, f"{name}.norm2"), f"{name}.qkv").reshape(b, c, 3, -1).unbind(2)
            w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / math.sqrt(c)), dim=2)
            a = torch.einsum("nqk,nck->ncq", w, v).reshape(h.shape)
            h = (conv(a, f"{name}.proj") + h) * math.sqrt(0.5)
        return h

    h = conv(x.double(), "enc.8x8_conv")
    skips = [h]
    for name, _, _, resample, attention in UNET_ENCODER:
        h = block(h, name, resample, attention)
        skips.append(h)
    for name, cin, _, resample, attention in UNET_DECODER:
        if h.shape[1] != cin:
            h = torch.cat([h, skips.pop()], 1)
        h = block(h, name, resample, attention)
    return conv(F.silu(norm(h, "dec.8x8_aux_norm")), "dec.8x8_aux_conv")


def test_unet_loads_every_key_and_computes_the_authors_g():
    sd = authors_unet_state_dict()
    model = load_authors_state_dict(UNet(**UNET).double(), sd)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    noise_t, noise_s = 994 * torch.rand(5, generator=gen), 994 * torch.rand(5, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4])
    one_hot = F.one_hot(labels, 5)[:, :4].double()
    expected = authors_unet_forward(sd, x, noise_t, noise_s, one_hot)
    torch.testing.assert_close(model(x, noise_t.double(), noise_s.double(), labels), expected, rtol=1e-7, atol=1e-7)


def test_unet_unconditional():
    sd = authors_unet_state_dict(label_dim=0)
    model = load_authors_state_dict(UNet(**{**UNET, "num_classes": 0}).double(), sd)
    x, n = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([3.0, 900.0])
    torch.testing.assert_close(model(x, n.double(), n.double().flip(0)), authors_unet_forward(sd, x, n, n.flip(0), None))


def test_unet_block_tables_follow_the_authors_loops_up_to_the_papers_configuration():
    assert authors_unet_blocks(8, 16, [1, 2], 1, [4]) == (UNET_ENCODER, UNET_DECODER)
    encoder, decoder = authors_unet_blocks(32, 128, [2, 2, 2], 4, [16])
    shapes = authors_unet_shapes(encoder, decoder, resolution=32, model_channels=128, emb=512, label_dim=0)
    with torch.device("meta"):
        paper = UNet()
    sd = {key: torch.full(shape, 0.25) if key.endswith("resample_filter") else torch.empty(shape, device="meta")
          for key, shape in shapes.items()}
    converted = convert_authors_state_dict(paper, sd)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in paper.state_dict().items()}
    assert sum(math.prod(s) for k, s in shapes.items() if not k.endswith("resample_filter")) == 56_061_443


def test_unet_rejects_wrong_state_dicts():
    model = UNet(**UNET)
    sd = authors_unet_state_dict()
    with pytest.raises(ValueError, match=r"missing keys \(2\): dec.4x4_block1.qkv.bias, dec.4x4_block1.qkv.weight"):
        convert_authors_state_dict(model, {k: v for k, v in sd.items() if not k.startswith("dec.4x4_block1.qkv")})
    with pytest.raises(ValueError, match=r"unknown keys \(1\): map_augment.weight"):
        convert_authors_state_dict(model, {**sd, "map_augment.weight": torch.zeros(16, 9)})
    ncsnpp_filter = torch.full((1, 1, 4, 4), 1 / 16)  # [1, 3, 3, 1] has another shape
    with pytest.raises(ValueError, match=r"wrong shape \(1\): enc.4x4_down.conv0.resample_filter"):
        convert_authors_state_dict(model, {**sd, "enc.4x4_down.conv0.resample_filter": ncsnpp_filter})
    with pytest.raises(ValueError, match="fixed buffers.*dec.8x8_up.skip.resample_filter"):
        convert_authors_state_dict(model, {**sd, "dec.8x8_up.skip.resample_filter": torch.ones(1, 1, 2, 2)})
    with pytest.raises(ValueError, match=r"unknown keys \(12\):.*enc.4x4_block0.norm2.bias.*missing keys \(12\):.*enc.8x8_block0.qkv.weight"):
        convert_authors_state_dict(UNet(**{**UNET, "attn_resolutions": [8]}), sd)
    with pytest.raises(ValueError, match="heads=2"):
        convert_authors_state_dict(UNet(**UNET, heads=2), sd)
    with pytest.raises(TypeError, match="model"):
        convert_authors_state_dict(torch.nn.Linear(2, 2), sd)
