"""The model registry (`build`) and persistence: state-dict and safetensors round trips for every kind, with
the build recipe stored in the file's metadata."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imm_ext.models import DiT, MLP, MODELS, UNet, build, load_model, save_model

CONFIGS = {
    "mlp": dict(dim=3, width=16, depth=2, num_classes=2, seed=4),
    "dit": dict(preset="S/8", input_size=16, in_channels=2, num_classes=3, depth=2, seed=5),
    "unet": dict(resolution=8, in_channels=2, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                 num_classes=3, dropout=0.0, seed=6),
}
SHAPES = {"mlp": (3,), "dit": (2, 16, 16), "unet": (2, 8, 8)}


def randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def inputs(kind, batch=2):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, *SHAPES[kind], generator=gen), 1000 * torch.rand(batch, generator=gen),
            1000 * torch.rand(batch, generator=gen), torch.tensor([0, 2]))


def test_build_makes_each_kind():
    assert set(MODELS) == {"mlp", "dit", "unet"}
    assert isinstance(build("mlp", **CONFIGS["mlp"]), MLP)
    dit = build("dit", **CONFIGS["dit"])
    assert isinstance(dit, DiT) and dit.config["hidden_size"] == 384 and dit.config["patch_size"] == 8
    assert isinstance(build("unet", **CONFIGS["unet"]), UNet)
    with pytest.raises(ValueError, match="kind"):
        build("vit")


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_rebuilds_the_same_network_and_state_dicts_round_trip(kind):
    model = build(kind, **CONFIGS[kind])
    rebuilt = build(kind, **model.config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    json.dumps(model.config)  # the recipe is plain JSON
    randomized(model)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*inputs(kind)), model(*inputs(kind)), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_safetensors_round_trip_needs_no_other_information(kind, tmp_path):
    model = randomized(build(kind, **CONFIGS[kind]))
    path = tmp_path / f"{kind}.safetensors"
    save_model(model, path)
    with safe_open(str(path), framework="pt") as f:
        recipe = json.loads(f.metadata()["imm_ext.model"])
    assert recipe == {"kind": kind, "config": model.config}
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs(kind)), model(*inputs(kind)), rtol=0, atol=0)


def test_safetensors_keeps_the_dtype(tmp_path):
    model = randomized(build("mlp", **CONFIGS["mlp"])).to(torch.bfloat16)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))


def test_load_rejects_foreign_or_mismatched_files(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a model saved by imm_ext"):
        load_model(tmp_path / "foreign.safetensors")
    recipe = json.dumps({"kind": "mlp", "config": CONFIGS["mlp"]})
    tensors = {k: v for k, v in build("mlp", **CONFIGS["mlp"]).state_dict().items() if k != "input.bias"}
    save_file(tensors, str(tmp_path / "truncated.safetensors"), metadata={"imm_ext.model": recipe})
    with pytest.raises(ValueError, match="truncated.safetensors' cannot be rebuilt.*input.bias"):
        load_model(tmp_path / "truncated.safetensors")
    with pytest.raises(TypeError, match="model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "linear.safetensors")
