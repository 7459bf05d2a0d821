"""Loading the IMM authors' released networks (github.com/lumalabs/imm) into imm_ext's DiT and UNet.

The authors ship pickles of their `IMMPrecond` wrapper around a DiT (ImageNet-256,
`imagenet256_ts_a2.pkl`, `imagenet256_s_a1.pkl`) or EDM's SongUNet in the DDPM++ configuration with an
s-embedding (CIFAR-10, `cifar10.pt`). `released.load_released` reads those files directly and comes
here with their state dict; a state dict exported in their environment loads the same way:

    model = imm_ext.models.DiT.from_preset("XL/2", input_size=32, in_channels=4, num_classes=1000)
    imm_ext.models.load_authors_state_dict(model, torch.load("imm_imagenet256_ts_a2_state.pt"))

(for CIFAR-10: `UNet()` with the defaults, which are the paper's network). The wrapper's keys carry the
prefix "model."; it is removed when every key has it. Loading is strict: every key must map onto a
parameter of the given model with the right shape, and anything unknown, missing or mis-shaped is
reported in one ValueError. The weights are rearranged where the layouts differ, so the loaded model
computes the authors' G (up to float rounding):
  * SongUNet orders its positional time features [sin, cos], imm_ext [cos, sin]: the input columns of
    both time MLPs' first layers (and a class embedding) are swapped by halves;
  * SongUNet's qkv 1x1 conv interleaves q, k, v per channel; imm_ext's qkv Linear stacks them;
  * SongUNet's class input is a one-hot vector times sqrt(num_classes) through a Linear, the null class
    an all-zero vector; imm_ext's table row y is that Linear's output for class y (row num_classes: its
    bias);
  * the authors' `pos_embed` (DiT) and `resample_filter` buffers (UNet) are checked, not loaded: imm_ext
    computes the same fixed values.
What the time inputs mean is the parametrisation's business (imm_ext.method): the ImageNet networks
`*_ts_*` take c_s = 1000 (t - s) ("stride"), `*_s_*` and CIFAR-10 take c_s = 1000 s (imm-method.md §2.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from torch import nn

from .dit import DiT, sincos_position_embedding
from .unet import UNet

WRAPPER_PREFIX = "model."


@dataclass(frozen=True)
class Rule:
    """Our parameter `target` computed by `convert` from the authors' tensors `sources` of shapes `shapes`."""

    target: str
    sources: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    convert: Callable[..., torch.Tensor]


def _copy(target: str, source: str, shape: Tuple[int, ...]) -> Rule:
    return Rule(target, (source,), (tuple(shape),), lambda t: t)


def _linear_from_conv1x1(target: str, source: str, shape: Tuple[int, ...]) -> Rule:
    return Rule(target, (source,), (tuple(shape) + (1, 1),), lambda t: t.flatten(1))


def _swap_halves(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[a, b] -> [b, a] along `dim` (SongUNet's [sin, cos] features <-> imm_ext's [cos, sin])."""
    first, second = t.chunk(2, dim=dim)
    return torch.cat([second, first], dim=dim)


def _deinterleave_qkv(t: torch.Tensor) -> torch.Tensor:
    """SongUNet's qkv rows ordered (channel, q|k|v) -> imm_ext's (q|k|v, channel)."""
    channels = t.shape[0] // 3
    return t.reshape(channels, 3, *t.shape[1:]).transpose(0, 1).reshape(t.shape[0], *t.shape[1:])


# ---------------------------------------------------------------------------------------------------------
# DiT (the authors' training/dit.py: timm Attention / Mlp / PatchEmbed inside DiTBlock)


def dit_rules(model: DiT) -> Tuple[List[Rule], Dict[str, torch.Tensor]]:
    """The mapping rules for `model`, and the authors' fixed buffers with the values they must have."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    pairs = [("patch_embedding", "x_embedder.proj"), ("final_modulation.linear", "final_layer.adaLN_modulation.1"),
             ("final.linear", "final_layer.linear")]
    for ours, theirs in (("embed_t", "t_embedder"), ("embed_s", "s_embedder")):
        pairs += [(f"embed_time.{ours}.mlp.{i}", f"{theirs}.mlp.{i}") for i in (0, 2)]
    for i in range(len(model.blocks)):
        pairs += [(f"blocks.{i}.modulation.linear", f"blocks.{i}.adaLN_modulation.1"),
                  (f"blocks.{i}.attention.attention.qkv", f"blocks.{i}.attn.qkv"),
                  (f"blocks.{i}.attention.attention.proj", f"blocks.{i}.attn.proj"),
                  (f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc1"), (f"blocks.{i}.mlp.fc2", f"blocks.{i}.mlp.fc2")]
    rules = [_copy(f"{ours}.{kind}", f"{theirs}.{kind}", shapes[f"{ours}.{kind}"])
             for ours, theirs in pairs for kind in ("weight", "bias")]
    if model.embed_label is not None:
        rules.append(_copy("embed_label.table.weight", "y_embedder.embedding_table.weight",
                           shapes["embed_label.table.weight"]))
    hidden, grid = model.config["hidden_size"], model.input_size // model.patch_size
    buffers = {"pos_embed": sincos_position_embedding(hidden, grid).to(torch.float32)[None]}
    return rules, buffers


def _check_dit(model: DiT) -> None:
    config = model.config
    unsupported = [f"{name}={config[name]!r} (the authors': {value!r})"
                   for name, value in (("norm", "layer"), ("qk_norm", False), ("eps", 1e-6)) if config[name] != value]
    if unsupported:
        raise ValueError("the model differs from the authors' DiT in settings that have no weights: "
                         + ", ".join(unsupported))


# ---------------------------------------------------------------------------------------------------------
# UNet (the authors' training/unets.py SongUNet: EDM's DDPM++ with map_noise_s / map_layer*_s)


def _unet_block_rules(ours: str, theirs: str, block: nn.Module) -> List[Rule]:
    rules = []
    for our_layer, their_layer in (("norm0", "norm0"), ("conv0", "conv0"), ("emb_proj", "affine"), ("norm1", "norm1"),
                                   ("conv1", "conv1"), ("skip", "skip"), ("norm2", "norm2")):
        if getattr(block, our_layer) is not None:
            rules += [_copy(f"{ours}.{our_layer}.{kind}", f"{theirs}.{their_layer}.{kind}",
                            getattr(block, our_layer).get_parameter(kind).shape) for kind in ("weight", "bias")]
    if block.attention is not None:
        qkv, proj = block.attention.qkv, block.attention.proj
        rules += [Rule(f"{ours}.attention.qkv.weight", (f"{theirs}.qkv.weight",), (tuple(qkv.weight.shape) + (1, 1),),
                       lambda t: _deinterleave_qkv(t.flatten(1))),
                  Rule(f"{ours}.attention.qkv.bias", (f"{theirs}.qkv.bias",), (tuple(qkv.bias.shape),),
                       _deinterleave_qkv),
                  _linear_from_conv1x1(f"{ours}.attention.proj.weight", f"{theirs}.proj.weight", proj.weight.shape),
                  _copy(f"{ours}.attention.proj.bias", f"{theirs}.proj.bias", proj.bias.shape)]
    return rules


def unet_block_names(model: UNet) -> Tuple[List[str], List[str]]:
    """The authors' names of model.encoder's and model.decoder's blocks (their `enc.*` / `dec.*`)."""
    levels, num_blocks = len(model.config["channel_mult"]), model.config["num_blocks"]
    encoder, decoder = [], []
    for level in range(levels):
        res = model.resolution >> level
        encoder += [f"enc.{res}x{res}_down"] if level else []
        encoder += [f"enc.{res}x{res}_block{i}" for i in range(num_blocks)]
    for level in reversed(range(levels)):
        res = model.resolution >> level
        decoder += [f"dec.{res}x{res}_in0", f"dec.{res}x{res}_in1"] if level == levels - 1 else [f"dec.{res}x{res}_up"]
        decoder += [f"dec.{res}x{res}_block{i}" for i in range(num_blocks + 1)]
    return encoder, decoder


def unet_rules(model: UNet) -> Tuple[List[Rule], Dict[str, torch.Tensor]]:
    """The mapping rules for `model`, and the authors' fixed buffers with the values they must have."""
    res = model.resolution
    rules = [_copy(f"input_conv.{kind}", f"enc.{res}x{res}_conv.{kind}", model.input_conv.get_parameter(kind).shape)
             for kind in ("weight", "bias")]
    rules += [_copy(f"output_{ours}.{kind}", f"dec.{res}x{res}_aux_{ours}.{kind}",
                    getattr(model, f"output_{ours}").get_parameter(kind).shape)
              for ours in ("norm", "conv") for kind in ("weight", "bias")]
    for ours, theirs in (("embed_t", ""), ("embed_s", "_s")):
        mlp = getattr(model.embed_time, ours).mlp
        rules += [Rule(f"embed_time.{ours}.mlp.0.weight", (f"map_layer0{theirs}.weight",),
                       (tuple(mlp[0].weight.shape),), lambda t: _swap_halves(t, dim=1)),
                  _copy(f"embed_time.{ours}.mlp.0.bias", f"map_layer0{theirs}.bias", mlp[0].bias.shape)]
        rules += [_copy(f"embed_time.{ours}.mlp.2.{kind}", f"map_layer1{theirs}.{kind}",
                        mlp[2].get_parameter(kind).shape) for kind in ("weight", "bias")]
    if model.embed_label is not None:
        classes, width = model.num_classes, model.embed_label.weight.shape[1]

        def label_table(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            rows = torch.cat([weight.t() * math.sqrt(classes), torch.zeros_like(bias)[None]]) + bias
            return _swap_halves(rows, dim=1)

        rules.append(Rule("embed_label.weight", ("map_label.weight", "map_label.bias"), ((width, classes), (width,)),
                          label_table))
    buffers = {}
    encoder_names, decoder_names = unet_block_names(model)
    for prefix, blocks, names in (("encoder", model.encoder, encoder_names), ("decoder", model.decoder, decoder_names)):
        for index, (block, theirs) in enumerate(zip(blocks, names)):
            rules += _unet_block_rules(f"{prefix}.{index}", theirs, block)
            if block.resample is not None:  # DDPM++'s [1, 1] filter, normalised: 2x2 of 1/4
                for conv in ("conv0", "skip"):
                    buffers[f"{theirs}.{conv}.resample_filter"] = torch.full((1, 1, 2, 2), 0.25)
    return rules, buffers


def _check_unet(model: UNet) -> None:
    if model.config["heads"] != 1:
        raise ValueError(f"the model differs from the authors' SongUNet in a setting that has no weights: "
                         f"heads={model.config['heads']} (the authors': 1)")


# ---------------------------------------------------------------------------------------------------------


def _listing(title: str, items: List[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
    return f"{title} ({len(items)}): {shown}"


def convert_authors_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' state dict rewritten as `model`'s state dict (see the module docstring); ValueError
    listing every unknown, missing and mis-shaped key, or settings of `model` the authors' network lacks."""
    if isinstance(model, DiT):
        _check_dit(model)
        rules, buffers = dit_rules(model)
    elif isinstance(model, UNet):
        _check_unet(model)
        rules, buffers = unet_rules(model)
    else:
        raise TypeError(f"model must be an imm_ext.models.DiT or UNet; got {type(model).__name__}")
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError("state_dict must be a mapping from key names to tensors (the authors' net.state_dict())")
    if state_dict and all(key.startswith(WRAPPER_PREFIX) for key in state_dict):
        state_dict = {key[len(WRAPPER_PREFIX):]: value for key, value in state_dict.items()}

    expected = {source: shape for rule in rules for source, shape in zip(rule.sources, rule.shapes)}
    expected.update({key: tuple(value.shape) for key, value in buffers.items()})
    unknown = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    misshaped = sorted(key for key in set(expected) & set(state_dict) if tuple(state_dict[key].shape) != expected[key])
    wrong_values = sorted(key for key, value in buffers.items() if key in state_dict and key not in misshaped
                          and not torch.allclose(state_dict[key].float().cpu(), value, rtol=0, atol=1e-5))
    misshaped = [f"{key} {tuple(state_dict[key].shape)} (expected {expected[key]})" for key in misshaped]
    problems = [_listing(title, items) for title, items in (
        ("unknown keys", unknown), ("missing keys", missing), ("keys with the wrong shape", misshaped),
        ("fixed buffers with values imm_ext does not compute", wrong_values)) if items]
    if problems:
        raise ValueError(f"state_dict does not match the authors' network for this {type(model).__name__}: "
                         + "; ".join(problems))
    return {rule.target: rule.convert(*(state_dict[source] for source in rule.sources)) for rule in rules}


def load_authors_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state dict exported from the authors' DiT or SongUNet (see the module docstring for the
    export) into `model` (an imm_ext DiT or UNet of the same configuration), strictly; returns model."""
    model.load_state_dict(convert_authors_state_dict(model, state_dict), strict=True)
    return model
