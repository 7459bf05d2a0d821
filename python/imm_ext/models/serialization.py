"""Saving and loading models as safetensors files that carry their own build recipe.

`save_model(model, path)` writes the model's state dict (tensors made contiguous; shared storage
copied) with the metadata entry "imm_ext.model" = JSON {"kind": ..., "config": model.config}, so that
`load_model(path)` rebuilds the network through the registry and loads the weights, with no other
information. Loading is strict: the file's tensors must be exactly the model's state dict.
"""
from __future__ import annotations

import json
import os
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .registry import build, kind_of

METADATA_KEY = "imm_ext.model"
PathLike = Union[str, os.PathLike]


def save_model(model: nn.Module, path: PathLike) -> None:
    """Write `model` (an imm_ext MLP, DiT or UNet) to the safetensors file `path`."""
    recipe = json.dumps({"kind": kind_of(model), "config": model.config}, sort_keys=True)
    tensors = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={METADATA_KEY: recipe})


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model saved at `path` by save_model, on `device` (its weights in the dtype they were saved in).
    ValueError naming the file when it is missing, not safetensors, not ours, or does not fit its recipe."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"model file {name!r} does not exist")
    try:
        with safe_open(name, framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()} if METADATA_KEY in metadata else {}
    except Exception as error:  # safetensors raises its own SafetensorError, OSError, ...
        raise ValueError(f"{name!r} is not a readable safetensors file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{name!r} is not a model saved by imm_ext.models.save_model (no {METADATA_KEY!r} metadata)")
    try:
        recipe = json.loads(metadata[METADATA_KEY])
        model = build(recipe["kind"], **recipe["config"])
        dtypes = {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()}
        model = model.to(device=device, dtype=dtypes.pop() if len(dtypes) == 1 else None)
        model.load_state_dict(tensors, strict=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as error:
        detail = " ".join(str(error).split())  # load_state_dict lists the keys on further lines
        raise ValueError(f"the model in {name!r} cannot be rebuilt from its recipe: {type(error).__name__}: "
                         f"{detail[:500]}") from None
    return model
