"""Training IMM (and the flow-matching baseline) from a typed configuration: presets, YAML and dotted
overrides (`config`, `config_io`, `presets`), the loop with EMA, mixed precision, gradient accumulation
and a non-finite guard (`trainer`), exactly resumable atomic checkpoints (`checkpoint`, `rng_state`),
torchrun-based distributed training (`distributed`), and the run's pictures, figures and metrics (`evaluation`,
`pictures`, `plots`, `run_log`). The `imm-ext` command (imm_ext.cli) drives it."""
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_atomic
from .config import (ConfigError, DataConfig, EvalConfig, LogConfig, LoopConfig, MethodConfig, ModelConfig,
                     OptimizerConfig, TrainingConfig)
from .config_io import apply_overrides, config_from_dict, config_to_dict, dump_config, load_config, parse_config
from .presets import DEFAULT_PRESET, TRAINING_PRESETS, get_preset
from .trainer import Trainer, TrainingDiverged, TrainResult

__all__ = ["CheckpointError", "ConfigError", "DEFAULT_PRESET", "DataConfig", "EvalConfig", "LogConfig", "LoopConfig",
           "MethodConfig", "ModelConfig", "OptimizerConfig", "TRAINING_PRESETS", "Trainer", "TrainResult",
           "TrainingConfig", "TrainingDiverged", "apply_overrides", "config_from_dict", "config_to_dict",
           "dump_config", "get_preset", "latest_checkpoint", "load_checkpoint", "load_config", "parse_config",
           "save_atomic"]
