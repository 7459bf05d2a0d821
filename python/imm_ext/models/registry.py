"""Models by name: `build(kind, **kwargs)` turns a config dict (as the trainer reads it) into a network.

Kinds: "mlp" (MLP), "dit" (DiT; `preset="S/2"` etc. selects a variant, other kwargs go to the
constructor), "unet" (UNet). Every model keeps the keyword arguments that rebuild it in `model.config`,
so `build(kind_of(model), **model.config)` gives the same network (same seed, same initial weights).
"""
from __future__ import annotations

from torch import nn

from .dit import DiT
from .mlp import MLP
from .unet import UNet

MODELS = {"mlp": MLP, "dit": DiT, "unet": UNet}


def build(kind: str, **kwargs) -> nn.Module:
    """The network of kind "mlp" | "dit" | "unet" built from keyword arguments (see each class)."""
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {tuple(MODELS)}; got {kind!r}")
    if kind == "dit" and "preset" in kwargs:
        preset = kwargs.pop("preset")
        return DiT.from_preset(preset, **kwargs)
    return MODELS[kind](**kwargs)


def kind_of(model: nn.Module) -> str:
    """The registry name of `model`'s class."""
    for kind, cls in MODELS.items():
        if type(model) is cls:
            return kind
    raise TypeError(f"model must be one of {[cls.__name__ for cls in MODELS.values()]}; got {type(model).__name__}")
