"""The training configuration: one frozen dataclass per concern, nested in `TrainingConfig`.

Sections (each field is a YAML key and a command-line override `section.field=value`):

- data: which dataset, where, and how batches are drawn.
- model: which network (imm_ext.models.build kind, an optional DiT preset, extra constructor options).
- method: "imm" or "flow_matching"; the IMM fields are those of `imm_ext.method.IMMPreset`, which
  MethodConfig extends; `training_method(config.method)` (train/methods.py) builds either method, and
  `config.method.loss()`, `.sampler()` and `.parametrization()` build through it.
- optimizer: AdamW / RAdam / Adam, learning rate with optional linear warmup and cosine or linear decay,
  optional gradient clipping.
- train: steps, batch sizes, seed, device, precision, EMA, non-finite guard, distributed timeout.
- log: run directory, logging / sample / checkpoint intervals, checkpoints kept.
- eval: step counts, sample count and guidance of the final (and optional periodic) evaluation.

`TrainingConfig.validate()` checks every field and raises a ValueError that names the key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional, Tuple

from ..method.flow_matching import FM_SOLVERS
from ..method.presets import IMMPreset
from ..method.weighting import WEIGHTING_KINDS
from .methods import FP16_MIN_GAP, TRAINING_METHODS, training_method

METHOD_KINDS = tuple(TRAINING_METHODS)
OPTIMIZERS = ("adamw", "radam", "adam")
LR_SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MAX_LEARNING_RATE = 1e4  # optimizer.lr's upper bound (see _validate)


class ConfigError(ValueError):
    """A configuration key with a bad value, an unknown key, or an inconsistent combination."""


@dataclass(frozen=True)
class DataConfig:
    """Dataset name for imm_ext.data.load_dataset, its path (for folder / zip / npy / npz / latents) and
    options; `eval_split` holds the real samples metrics compare against ("train" reuses the training set)."""

    name: str = "digits"
    path: Optional[str] = None
    split: str = "train"
    eval_split: str = "test"
    conditional: bool = False  # feed labels to the network (needs a labelled dataset)
    hflip: bool = False
    options: Dict[str, Any] = field(default_factory=dict)
    vae: Optional[str] = None  # latents: the VAE that decodes samples to images (a directory or a hub id)


@dataclass(frozen=True)
class ModelConfig:
    """imm_ext.models.build(kind, **options), or DiT.from_preset(preset, ...) when `preset` is set.
    Data shape and class count are filled in from the dataset."""

    kind: str = "dit"
    preset: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodConfig(IMMPreset):
    """The IMM settings (every IMMPreset field) plus which objective trains the network.

    kind "flow_matching" trains the same network as a velocity field (imm_ext.method.flow_matching) with
    the Euler-FM reading of G on the "fm" schedule, t ~ U(fm_t_min, fm_t_max); it uses sigma_data and
    label_dropout from here, and samples with `fm_solver`.
    """

    kind: str = "imm"
    fm_solver: str = "euler"
    fm_t_min: float = 0.0
    fm_t_max: float = 1.0

    @classmethod
    def from_preset(cls, preset: IMMPreset, **changes) -> "MethodConfig":
        return cls(**{**{f.name: getattr(preset, f.name) for f in fields(IMMPreset)}, **changes})

    # IMMPreset's builders, for the method `kind` names (flow matching included).
    def parametrization(self, network, null_label: Optional[int] = None):
        return training_method(self).parametrization(network, null_label)

    def loss(self):
        return training_method(self).loss()

    def sampler(self, model, steps: Optional[int] = None, guidance: Optional[float] = None):
        return training_method(self).sampler(model, steps, guidance)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warmup from 0 to lr over this many steps
    # After warmup: "constant", or a cosine or linear fall to lr * final_lr_fraction at train.steps.
    schedule: str = "constant"
    final_lr_fraction: float = 0.0
    grad_clip: Optional[float] = None  # max global gradient norm; None: no clipping


@dataclass(frozen=True)
class LoopConfig:
    """The training loop. batch_size is global (all ranks, all accumulation micro-steps);
    micro_batch is per rank and a multiple of method.particles (None: the whole per-rank batch)."""

    steps: int = 1000
    batch_size: int = 256
    micro_batch: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay_n = min(ema_decay, (1 + n) / (10 + n))
    max_nonfinite: int = 10  # abort when a logged or checkpoint step sees this many non-finite steps in a row
    dist_timeout_s: float = 600.0  # collective timeout: a dead rank ends the job instead of hanging it
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)
    # On CPU, freed memory stays in the process for the next step (imm_ext.process_memory): no page faults
    # on each step's fresh activations and gradients; the process holds its peak memory until the run ends.
    keep_freed_memory: bool = True


@dataclass(frozen=True)
class LogConfig:
    root: str = "runs"
    name: Optional[str] = None  # run directory root/name; None: the preset name
    log_every: int = 50
    sample_every: int = 0  # 0: only at the end
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    grid_size: int = 64  # samples in a periodic / final grid
    progress: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed


@dataclass(frozen=True)
class EvalConfig:
    steps: Tuple[int, ...] = (1, 2, 4, 8)
    num_samples: int = 1000
    batch_size: int = 500
    guidance: Optional[float] = None  # None: method.guidance
    feature_net: Optional[str] = None  # None: the dataset's ("digits", "fashion-mnist"); or "inception"
    every: int = 0  # periodic evaluation interval in steps; 0: only at the end
    use_ema: bool = True
    seed: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    preset: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_name(self) -> str:
        return self.log.name or self.preset or "run"

    def validate(self) -> "TrainingConfig":
        """Check every field; returns self, or raises ConfigError naming the key."""
        _validate(self)
        return self


# ---------------------------------------------------------------------------------------------
# Validation

def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, for error messages (long containers are only counted)."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{key}: {message}")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        _fail(key, f"must be one of {', '.join(map(repr, choices))}; got {short_repr(value)}")


def _positive_int(key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, f"must be an integer >= {minimum}; got {short_repr(value)}")


def _finite(key: str, value, low: float = -math.inf, high: float = math.inf, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, f"must be a finite number; got {short_repr(value)}")
    if value < low or (open_low and value == low) or value > high:
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        _fail(key, f"must lie in {bound}; got {short_repr(value)}")


def _validate(config: TrainingConfig) -> None:
    data, method, optimizer, loop, log, evaluation = (config.data, config.method, config.optimizer, config.train,
                                                      config.log, config.eval)
    if not isinstance(data.name, str) or not data.name:
        _fail("data.name", f"must be a dataset name; got {short_repr(data.name)}")
    _choice("method.kind", method.kind, METHOD_KINDS)
    _choice("method.fm_solver", method.fm_solver, FM_SOLVERS)
    _choice("method.weighting", method.weighting, WEIGHTING_KINDS)
    _check_method(method)
    _choice("optimizer.name", optimizer.name, OPTIMIZERS)
    # Adam-type optimisers move each weight by about lr a step: far below the bound is all that trains,
    # and above it torch's float32 update (lr / bias correction) overflows inside the optimiser.
    _finite("optimizer.lr", optimizer.lr, 0.0, MAX_LEARNING_RATE, open_low=True)
    for i, beta in enumerate(optimizer.betas):
        _finite(f"optimizer.betas[{i}]", beta, 0.0, 1.0)
    _finite("optimizer.eps", optimizer.eps, 0.0, open_low=True)
    _finite("optimizer.weight_decay", optimizer.weight_decay, 0.0)
    _positive_int("optimizer.warmup_steps", optimizer.warmup_steps, 0)
    _choice("optimizer.schedule", optimizer.schedule, LR_SCHEDULES)
    _finite("optimizer.final_lr_fraction", optimizer.final_lr_fraction, 0.0, 1.0)
    if optimizer.grad_clip is not None:
        _finite("optimizer.grad_clip", optimizer.grad_clip, 0.0, open_low=True)
    _check_loop(loop, method)
    for key in ("log_every", "checkpoint_every", "keep_checkpoints", "grid_size"):
        _positive_int(f"log.{key}", getattr(log, key))
    _positive_int("log.sample_every", log.sample_every, 0)
    if log.name is not None and (not log.name or "/" in log.name or log.name in (".", "..")):
        _fail("log.name", f"must be a plain directory name; got {short_repr(log.name)}")
    if not evaluation.steps:
        _fail("eval.steps", "must list at least one step count")
    for i, steps in enumerate(evaluation.steps):
        _positive_int(f"eval.steps[{i}]", steps)
    _positive_int("eval.num_samples", evaluation.num_samples)
    _positive_int("eval.batch_size", evaluation.batch_size)
    _positive_int("eval.every", evaluation.every, 0)
    _positive_int("eval.seed", evaluation.seed, 0)
    if evaluation.guidance is not None:
        _finite("eval.guidance", evaluation.guidance)
    for key, guidance in (("method.guidance", method.guidance), ("eval.guidance", evaluation.guidance)):
        if guidance is not None and not data.conditional:
            _fail(key, "guidance needs a class-conditional model (data.conditional=true)")


def _check_method(method: MethodConfig) -> None:
    """Build the objective once: the method's own checks name the offending setting."""
    try:
        training_method(method).check()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method: {error}") from None
    _finite("method.sigma_data", method.sigma_data, 0.0, open_low=True)
    _positive_int("method.sampling_steps", method.sampling_steps)
    if method.guidance is not None:
        _finite("method.guidance", method.guidance)


def _check_loop(loop: LoopConfig, method: MethodConfig) -> None:
    _positive_int("train.steps", loop.steps)
    _positive_int("train.batch_size", loop.batch_size)
    _positive_int("train.seed", loop.seed, 0)
    _choice("train.device", loop.device, DEVICES)
    _choice("train.precision", loop.precision, PRECISIONS)
    _finite("train.ema_decay", loop.ema_decay, 0.0, 1.0)
    if loop.ema_decay == 1.0:
        _fail("train.ema_decay", "must be < 1 (1 would freeze the EMA at the initial weights)")
    _positive_int("train.max_nonfinite", loop.max_nonfinite)
    _finite("train.dist_timeout_s", loop.dist_timeout_s, 0.0, open_low=True)
    if loop.threads is not None:
        _positive_int("train.threads", loop.threads)
    group = training_method(method).group_size
    if loop.batch_size % group:
        _fail("train.batch_size", f"must be a multiple of method.particles ({group}): every IMM group of M "
                                  f"particles stays in one micro-batch; got {loop.batch_size}")
    if loop.micro_batch is not None:
        _positive_int("train.micro_batch", loop.micro_batch)
        if loop.micro_batch % group:
            _fail("train.micro_batch", f"must be a multiple of method.particles ({group}) so that no IMM group "
                                       f"is split; got {loop.micro_batch}")


def with_precision_defaults(config: TrainingConfig) -> TrainingConfig:
    """The method's settings for the run's precision (fp16 IMM: the minimum t - r gap of App. I.6)."""
    return replace(config, method=training_method(config.method).for_precision(config.train.precision))

