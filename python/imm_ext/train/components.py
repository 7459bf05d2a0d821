"""From a TrainingConfig to the objects a run uses: datasets, the network and its parametrisation, and the
optimiser (the objective and the samplers come from the method object, train/methods.py). The training
loop, `imm-ext sample` and `imm-ext eval` all build through here, so a checkpoint rebuilds exactly the
network it was trained with."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .. import models
from ..method import IMMParametrization
from .config import ConfigError, DataConfig, MethodConfig, ModelConfig, OptimizerConfig
from .methods import training_method


@dataclass(frozen=True)
class DataInfo:
    """What the network and the metrics need to know about the data, kept in every checkpoint."""

    name: str
    sample_shape: Tuple[int, ...]
    num_classes: int  # 0 for an unconditional model

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "sample_shape": list(self.sample_shape), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "DataInfo":
        return cls(str(values["name"]), tuple(int(v) for v in values["sample_shape"]), int(values["num_classes"]))


def load_data(config: DataConfig, split: Optional[str] = None):
    """imm_ext.data.load_dataset for the configured source, with errors that name the data keys."""
    from .. import data  # imported here: the data sources are only needed by a run that reads data

    split = config.split if split is None else split
    if config.name not in data.DATASET_NAMES:
        raise ConfigError(f"data.name: unknown dataset {config.name!r}; one of {', '.join(data.DATASET_NAMES)}")
    try:
        return data.load_dataset(config.name, path=config.path, split=split, **config.options)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise ConfigError(f"data.path: the dataset {config.name!r} cannot be read from {config.path!r}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data ({config.name!r}, split {split!r}): {error}") from None


def data_info(config: DataConfig, dataset) -> DataInfo:
    num_classes = int(getattr(dataset, "num_classes", 0) or 0)
    if config.conditional and num_classes == 0:
        raise ConfigError(f"data.conditional: the dataset {config.name!r} has no labels")
    shape = tuple(int(size) for size in (getattr(dataset, "sample_shape", None) or dataset[0][0].shape))
    return DataInfo(config.name, shape, num_classes if config.conditional else 0)


def network_arguments(config: ModelConfig, info: DataInfo) -> Dict[str, Any]:
    """The keyword arguments of imm_ext.models.build: the configured options plus the data's shape and classes."""
    from_data: Dict[str, Any] = {"num_classes": info.num_classes}
    if len(info.sample_shape) == 1:
        from_data["dim"] = info.sample_shape[0]
    elif len(info.sample_shape) == 3:
        channels, height, width = info.sample_shape
        if height != width:
            raise ConfigError(f"model: the networks take square images; the data are {height}x{width}")
        from_data["in_channels"] = channels
        from_data["resolution" if config.kind == "unet" else "input_size"] = height
    else:
        raise ConfigError(f"data: samples must be vectors (D,) or images (C, H, W); got shape {info.sample_shape}")
    clashes = sorted(key for key in from_data if key in config.options and config.options[key] != from_data[key])
    if clashes:
        raise ConfigError(f"model.options: {', '.join(clashes)} come from the data "
                          f"({', '.join(f'{k}={from_data[k]}' for k in clashes)}); remove them")
    arguments = {**config.options, **from_data}
    if config.preset is not None:
        arguments["preset"] = config.preset
    return arguments


def build_network(kind: str, arguments: Dict[str, Any]) -> nn.Module:
    try:
        return models.build(kind, **arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model ({kind!r}): {error}") from None


def parametrize(network: nn.Module, method: MethodConfig, info: DataInfo) -> IMMParametrization:
    """f_{s,t} around G; the null label (guidance, label dropout) is index num_classes."""
    return training_method(method).parametrization(network, null_label=info.num_classes if info.num_classes else None)


def build_optimizer(parameters, config: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam and AdamW fused (they take the step guard's skip flag on the device); RAdam, which has no
    fused kernel, keeps its step count on the GPU (capturable) so that putting a skipped step back never
    waits for the host (step_guard.py)."""
    parameters = list(parameters)
    common = {"lr": config.lr, "betas": tuple(config.betas), "eps": config.eps, "weight_decay": config.weight_decay}
    if config.name == "radam":
        return torch.optim.RAdam(parameters, capturable=parameters[0].is_cuda, **common)
    return {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[config.name](parameters, fused=True, **common)


def learning_rate(config: OptimizerConfig, step: int, total_steps: int) -> float:
    """The learning rate of update `step` of `total_steps`: linear warmup over the first warmup_steps, then
    constant (the paper's Table 5: a constant 1e-4), or a cosine or linear fall from lr to
    lr * final_lr_fraction at the last update."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - 1 - config.warmup_steps))
    fall = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
    return config.lr * (config.final_lr_fraction + (1.0 - config.final_lr_fraction) * fall)


