"""The DDPM++ UNet: shapes at tiny sizes, G = 0 at initialisation, seeded initialisation, gradients to every
parameter, dropout, bf16 autocast, class embedding, the paper's parameter count (meta device), bad input."""
import pytest
import torch

from conftest import assert_trains_and_reads_every_input
from imm_ext.models import UNet

TINY = dict(resolution=8, in_channels=1, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
            dropout=0.0)


def inputs(batch=3, channels=1, size=8, seed=0, classes=4):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, size, size, generator=gen), 1000 * torch.rand(batch, generator=gen),
            1000 * torch.rand(batch, generator=gen), torch.randint(0, classes + 1, (batch,), generator=gen))


def perturb_output(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.output_conv.weight.copy_(0.1 * torch.randn(model.output_conv.weight.shape, generator=gen))
    return model


@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_and_zero_output_at_init(batch):
    model = UNet(**TINY, num_classes=4)
    x, c_t, c_s, labels = inputs(batch)
    out = model(x, c_t, c_s, labels)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    assert f"parameters={sum(p.numel() for p in model.parameters()):,}" in repr(model)


def test_three_levels_rgb_and_out_channels():
    model = perturb_output(UNet(resolution=16, in_channels=3, out_channels=2, model_channels=8, channel_mult=[1, 2, 2],
                                num_blocks=2, attn_resolutions=[8, 4], heads=2))
    x, c_t, c_s, _ = inputs(channels=3, size=16)
    assert model(x, c_t, c_s).shape == (3, 2, 16, 16)
    attention_blocks = [name for name, m in model.named_modules() if type(m).__name__ == "SelfAttention"]
    assert len(attention_blocks) == 2 * 2 + 1 + 2  # encoder 8x8, 4x4; decoder's coarsest in0; one per level


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = UNet(**TINY, seed=1), UNet(**TINY, seed=1), UNet(**TINY, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.input_conv.weight, c.input_conv.weight)


def test_initialisation_scales():
    model = UNet(**TINY)
    block = model.decoder[0]
    assert block.conv1.weight.abs().max() < 1e-4 and block.attention.proj.weight.abs().max() < 1e-4
    assert 0.1 < block.conv0.weight.abs().max() < 1 and not block.conv0.bias.any()
    assert not model.output_conv.weight.any()


def test_gradients_reach_every_parameter_and_all_inputs_matter():
    model = perturb_output(UNet(**TINY, num_classes=4))
    x, c_t, c_s, _ = inputs(batch=5)
    labels = torch.arange(5)  # every class and the null class 4
    assert_trains_and_reads_every_input(model, x, c_t, c_s, labels, 5)


def test_dropout_acts_in_training_only():
    model = perturb_output(UNet(**{**TINY, "dropout": 0.5}))
    with torch.no_grad():
        for block in list(model.encoder) + list(model.decoder):
            block.conv1.weight.mul_(1e4)  # make the dropped branch visible in the output
    x, c_t, c_s, _ = inputs()
    torch.manual_seed(0)
    assert not torch.allclose(model(x, c_t, c_s), model(x, c_t, c_s))
    model.eval()
    assert torch.equal(model(x, c_t, c_s), model(x, c_t, c_s))


def test_bf16_autocast_runs():
    model = perturb_output(UNet(**TINY))
    x, c_t, c_s, _ = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, c_t, c_s)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(x, c_t, c_s), rtol=0.1, atol=0.05)


def test_papers_cifar10_network_has_55_7M_parameters_plus_the_s_embedding():
    with torch.device("meta"):
        model = UNet()  # the defaults are the paper's CIFAR-10 DDPM++
    s_embedding = 128 * 512 + 512 + 512 * 512 + 512
    count = sum(p.numel() for p in model.parameters())
    assert round((count - s_embedding) / 1e6, 2) == 55.73  # EDM's DDPM++ at channel_mult [2, 2, 2]
    assert model.config["dropout"] == 0.2 and model.config["attn_resolutions"] == [16]


def test_bad_input():
    with pytest.raises(ValueError, match="model_channels"):
        UNet(**{**TINY, "model_channels": 2})
    with pytest.raises(ValueError, match="resolution must be divisible"):
        UNet(**{**TINY, "resolution": 7})
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet(**{**TINY, "attn_resolutions": [2]})
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(**{**TINY, "channel_mult": []})
    with pytest.raises(ValueError, match="dropout"):
        UNet(**{**TINY, "dropout": 1.0})
    model = UNet(**TINY)
    x, c_t, c_s, labels = inputs()
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[..., :4, :4], c_t, c_s)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, c_t, c_s, labels)
    with pytest.raises(TypeError, match="c_t"):
        model(x, c_t.long(), c_s)
