"""The IMM authors' released networks (`imagenet256_ts_a2.pkl`, `imagenet256_s_a1.pkl`, `cifar10.pt`)
read directly, without their code and without running anything from the file.

Their files are EDM-style persistence pickles: each network class is stored as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where meta holds the class name, the
module's source code (which their loader executes) and the object's state; torch.nn and timm layers are
stored by class reference; tensors as torch's storages. Here a restricted unpickler resolves only:
- the tensor and parameter rebuilders and dtypes (storages are read by `torch.load(weights_only=True)`
  or from the file's own zip records), OrderedDict, set, EasyDict as a dict;
- the persistence reconstructor and the classes of torch.nn, timm, omegaconf and the authors'
  `training` package, each as an inert record of its state: no constructor runs, the source code in
  meta is never executed, only its class name and state are read.
Anything else (`os.system`, `builtins.eval`, any other class) is refused, naming it.

The records are then walked for the network's state dict (parameters and persistent buffers), whose
names and shapes give the architecture, and the wrapper's constructor arguments (the method settings);
`interop` maps the state onto imm_ext's DiT or UNet strictly; tensors the network does not use are
reported in `extra_keys`, not fatal.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import types
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import nn

from ..restricted_pickle import RestrictedUnpickler, UnsafePickleError, numpy_array_globals
from .dit import DiT
from .interop import WRAPPER_PREFIX, convert_authors_state_dict, dit_rules, unet_rules
from .unet import UNet

RECORDED_MODULES = ("torch.nn.modules.", "timm.", "training.", "omegaconf.")
_DIT_CLASS = re.compile(r"DiT_(S|B|L|XL)_(2|4|8)$")


class Record:
    """An object of a class that is never instantiated: its class, call arguments, state and items."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def __repr__(self) -> str:
        return f"<record of {type(self).__module__}.{type(self).__qualname__}>"


def _record_class(module: str, name: str) -> type:
    return type(name, (Record,), {"__module__": module, "__qualname__": name})


def _persistent_object(meta) -> Record:
    """What `_reconstruct_persistent_obj(meta)` would build, as a record: the class name and state only."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise UnsafePickleError("a persistent object without a class name")
    record = _record_class("persistent", meta["class_name"])()
    record.state = meta.get("state") or {}
    return record


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _EasyDict(dict):
    """dnnlib's EasyDict, read as the dict it is."""


def _allowed(module: str, name: str):
    fixed = {**numpy_array_globals(),
             ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
             ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
             ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
             ("torch", "Size"): torch.Size,
             ("collections", "OrderedDict"): collections.OrderedDict,
             ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
             ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,  # protocol 2's names
             ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
             ("dnnlib.util", "EasyDict"): _EasyDict}
    if (module, name) in fixed:
        return fixed[(module, name)]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if (module, name) == ("torch.nn.parameter", "Parameter"):
        return nn.Parameter
    return _record_class(module, name) if module.startswith(RECORDED_MODULES) else None


class _Unpickler(RestrictedUnpickler):
    def __init__(self, file, *, source: str = "the file", **kwargs):
        super().__init__(file, {}, source=source, **kwargs)

    def find_class(self, module: str, name: str):
        found = _allowed(module, name)
        if found is None:
            raise UnsafePickleError(f"{self.source} refers to {module}.{name}, which a released network does not "
                                    f"need and is not allowed here (a pickle may run code through the globals it "
                                    f"names)")
        return found


def read_released_file(path: Union[str, os.PathLike]) -> Any:
    """The object in a released .pkl (plain pickle) or .pt (torch.save zip), with records for modules."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"released network not found: {path!r}")
    if zipfile.is_zipfile(path):
        class NamedUnpickler(_Unpickler):  # torch.load subclasses pickle_module.Unpickler
            def __init__(self, file, **kwargs):
                super().__init__(file, source=repr(path), **kwargs)

        restricted = types.SimpleNamespace(__name__="imm_ext_restricted_pickle", Unpickler=NamedUnpickler)
        try:
            return torch.load(path, map_location="cpu", pickle_module=restricted, weights_only=False)
        except UnsafePickleError:
            raise
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
            raise ValueError(f"{path!r} is not a readable torch.save file ({error})") from None
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return _Unpickler(io.BytesIO(data), source=repr(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError, ValueError,
            RuntimeError) as error:
        raise ValueError(f"{path!r} is not a readable pickle ({type(error).__name__}: {error})") from None


def _state_of(record: Record) -> dict:
    state = record.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):  # (dict, slots)
        state = state[0]
    return state if isinstance(state, dict) else {}


def module_tensors(record: Record, prefix: str = "") -> Dict[str, torch.Tensor]:
    """The state dict a recorded nn.Module would return: parameters and persistent buffers, recursively."""
    state = _state_of(record)
    tensors = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            tensors[prefix + name] = value.detach()
    skipped = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skipped:
            tensors[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Record):
            tensors.update(module_tensors(child, f"{prefix}{name}."))
    return tensors


def _init_kwargs(record: Record) -> Dict[str, Any]:
    kwargs = _state_of(record).get("_init_kwargs") or {}
    return dict(kwargs) if isinstance(kwargs, dict) else {}


@dataclass
class ReleasedNetwork:
    """An authors' network read into imm_ext: the network, the authors' settings (IMMPrecond's keyword
    arguments: f_type, temb_type, eps, T, sigma_data, noise_schedule, ...), and unused tensors."""

    network: nn.Module
    settings: Dict[str, Any]
    class_name: str
    extra_keys: List[str] = field(default_factory=list)


def _network_record(loaded: Any, path: str) -> Record:
    if isinstance(loaded, dict) and "ema" in loaded:
        loaded = loaded["ema"]
    if not isinstance(loaded, Record):
        raise ValueError(f"{path!r} holds no network (expected the authors' {{'ema': IMMPrecond}} or a network); "
                         f"found {type(loaded).__name__}")
    return loaded


def _build(inner: Record, tensors: Dict[str, torch.Tensor]) -> nn.Module:
    """imm_ext's DiT or UNet shaped like the authors' inner network: the sizes come from the tensors
    (their constructor arguments may be config objects that are not read here); only the DiT's head
    count, which no shape shows, comes from the class name (DiT_XL_2 ...) or the num_heads argument."""
    name = type(inner).__qualname__

    def shape(key: str) -> Tuple[int, ...]:
        if key not in tensors:
            raise ValueError(f"the released {name} has no tensor {key!r}, so its size cannot be read")
        return tuple(tensors[key].shape)

    match = _DIT_CLASS.match(name)
    if match or name == "DiT":
        hidden, channels, patch, _ = shape("x_embedder.proj.weight")
        grid = math.isqrt(shape("pos_embed")[1])
        size = {"input_size": grid * patch, "in_channels": channels,
                "num_classes": shape("y_embedder.embedding_table.weight")[0] - 1}
        if match:
            return DiT.from_preset(f"{match.group(1)}/{match.group(2)}", **size)
        depth = 1 + max(int(key.split(".")[1]) for key in tensors if key.startswith("blocks."))
        heads = _init_kwargs(inner).get("num_heads", 16)
        return DiT(patch_size=patch, hidden_size=hidden, depth=depth, heads=int(heads), **size)
    if name == "SongUNet":
        return UNet(**_unet_sizes(tensors, shape), dropout=float(_init_kwargs(inner).get("dropout", 0.0)))
    raise ValueError(f"the released network's model is a {name!r}; imm_ext reads DiT, DiT_<size>_<patch> and "
                     f"SongUNet")


def _unet_sizes(tensors: Dict[str, torch.Tensor], shape) -> Dict[str, Any]:
    """SongUNet's configuration from its encoder's tensor names and shapes (enc.<R>x<R>_conv, _block<i>)."""
    (conv,) = [key for key in tensors if re.fullmatch(r"enc\.\d+x\d+_conv\.weight", key)]
    resolution = int(conv.split(".")[1].split("x")[0])
    model_channels, in_channels = shape(conv)[:2]
    blocks: Dict[int, Dict[int, str]] = {}
    for key in tensors:
        found = re.fullmatch(r"enc\.(\d+)x\d+_block(\d+)\.conv0\.weight", key)
        if found:
            blocks.setdefault(int(found.group(1)), {})[int(found.group(2))] = key
    levels = sorted(blocks, reverse=True)
    attention = [r for r in levels if any(f"enc.{r}x{r}_block{i}.qkv.weight" in tensors for i in blocks[r])]
    return {"resolution": resolution, "in_channels": in_channels, "model_channels": model_channels,
            "channel_mult": [shape(blocks[r][max(blocks[r])])[0] // model_channels for r in levels],
            "channel_mult_emb": shape("map_layer0.weight")[0] // model_channels,
            "num_blocks": len(blocks[resolution]), "attn_resolutions": attention,
            "num_classes": shape("map_label.weight")[1] if "map_label.weight" in tensors else 0}


def load_released(path: Union[str, os.PathLike]) -> ReleasedNetwork:
    """Read an authors' .pkl / .pt (see the module docstring) into imm_ext's DiT or UNet."""
    path = os.fspath(path)
    wrapper = _network_record(read_released_file(path), path)
    settings = _init_kwargs(wrapper)
    modules = _state_of(wrapper).get("_modules") or {}
    inner = modules["model"] if isinstance(modules.get("model"), Record) else wrapper
    tensors = module_tensors(inner)
    network = _build(inner, tensors)
    expected = _expected_keys(network)
    extra = sorted(set(module_tensors(wrapper)) - {(WRAPPER_PREFIX if inner is not wrapper else "") + key
                                                   for key in tensors if key in expected})
    try:
        state = convert_authors_state_dict(network, {key: value for key, value in tensors.items() if key in expected})
    except ValueError as error:
        raise ValueError(f"{path!r}: {error}") from None
    network.load_state_dict(state, strict=True)
    return ReleasedNetwork(network.eval(), settings, type(wrapper).__qualname__, extra)


def _expected_keys(network: nn.Module) -> set:
    """The authors' key names that the interop rules for `network` read."""
    rules, buffers = dit_rules(network) if isinstance(network, DiT) else unet_rules(network)
    return {source for rule in rules for source in rule.sources} | set(buffers)
