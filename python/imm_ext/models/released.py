"""The IMM authors' released networks (`imagenet256_ts_a2.pkl`, `imagenet256_s_a1.pkl`, `cifar10.pt`)
read directly, without their code and without running anything from the file.

Their files are EDM-style persistence pickles: each network class is stored as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where meta holds the class name, the
module's source code (which their loader executes) and the object's state; torch.nn and timm layers are
stored by class reference; tensors as torch's storages. Here a restricted unpickler resolves only:
- the tensor and parameter rebuilders and dtypes (storages are read by `torch.load(weights_only=True)`
  or from the file's own zip records), OrderedDict, set, EasyDict as a dict;
- the persistence reconstructor and the classes of torch.nn, timm and the authors' `training` package,
  each as an inert record of its state: no constructor runs, the source code in meta is never
  executed, only its class name and state are read.
Anything else (`os.system`, `builtins.eval`, any other class) is refused, naming it.

The records are then walked for the network's constructor arguments and its state dict (parameters and
persistent buffers), which `interop` maps onto imm_ext's DiT or UNet strictly; tensors the network does
not use are reported in `extra_keys`, not fatal.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import types
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Union

import torch
from torch import nn

from ..restricted_pickle import RestrictedUnpickler, UnsafePickleError, numpy_array_globals
from .dit import DiT
from .interop import WRAPPER_PREFIX, convert_authors_state_dict, dit_rules, unet_rules
from .unet import UNet

RECORDED_MODULES = ("torch.nn.modules.", "timm.", "training.")
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


def _build(inner: Record, settings: Dict[str, Any]) -> nn.Module:
    """imm_ext's DiT or UNet with the configuration of the authors' inner network record."""
    name, kwargs = type(inner).__qualname__, _init_kwargs(inner)
    resolution = int(kwargs.get("img_resolution", settings.get("img_resolution", 32)))
    channels = int(kwargs.get("in_channels", settings.get("img_channels", 3)))
    classes = int(kwargs.get("label_dim", settings.get("label_dim", 0)))
    match = _DIT_CLASS.match(name)
    if match:
        return DiT.from_preset(f"{match.group(1)}/{match.group(2)}", input_size=resolution, in_channels=channels,
                               num_classes=classes)
    if name == "DiT":
        return DiT(input_size=resolution, patch_size=int(kwargs.get("patch_size", 2)), in_channels=channels,
                   hidden_size=int(kwargs.get("hidden_size", 1152)), depth=int(kwargs.get("depth", 28)),
                   heads=int(kwargs.get("num_heads", 16)), num_classes=classes)
    if name == "SongUNet":
        options = {key: kwargs[key] for key in ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                                                "attn_resolutions", "dropout") if key in kwargs}
        return UNet(resolution=resolution, in_channels=channels, num_classes=classes, **options)
    raise ValueError(f"the released network's model is a {name!r}; imm_ext reads DiT, DiT_<size>_<patch> and "
                     f"SongUNet")


def load_released(path: Union[str, os.PathLike]) -> ReleasedNetwork:
    """Read an authors' .pkl / .pt (see the module docstring) into imm_ext's DiT or UNet."""
    path = os.fspath(path)
    wrapper = _network_record(read_released_file(path), path)
    settings = _init_kwargs(wrapper)
    modules = _state_of(wrapper).get("_modules") or {}
    inner = modules["model"] if isinstance(modules.get("model"), Record) else wrapper
    network = _build(inner, settings)
    tensors = module_tensors(inner)
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
