"""What may change when a run is resumed, and what may not.

A resumed run continues the checkpoint's run: the same data, network, method, batch, seed and precision.
A configuration that differs in any of those would train something else on top of the saved state (or
fail deep inside a load), so it is refused with the list of differences. The length of the run, the
logging, the evaluation and the machine's threads may change freely (the length with a note where the
learning rate decays over it); a few optimiser settings that users change on purpose after a divergence
(learning rate, warm-up, schedule, clipping) and the device may change with a note, since the
continuation is then no longer what an uninterrupted run would have given.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .config import ConfigError, TrainingConfig, short_repr
from .config_io import config_to_dict

FREE = ("preset", "log.", "eval.", "train.steps", "train.threads", "train.dist_timeout_s", "train.max_nonfinite",
        "data.vae")
NOTED = ("optimizer.lr", "optimizer.warmup_steps", "optimizer.schedule", "optimizer.final_lr_fraction",
         "optimizer.grad_clip", "train.device", "train.micro_batch")


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def resume_differences(saved: TrainingConfig, current: TrainingConfig) -> Tuple[List[str], List[str]]:
    """(refused, noted): 'key: saved -> current' for every setting that differs, split by whether a
    resume may change it."""
    old, new = _flatten(config_to_dict(saved)), _flatten(config_to_dict(current))
    refused, noted = [], []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        decays_over_length = key == "train.steps" and current.optimizer.schedule != "constant"
        if before == after or (_matches(key, FREE) and not decays_over_length):
            continue
        change = f"{key}: {short_repr(before, 60)} -> {short_repr(after, 60)}"
        (noted if _matches(key, NOTED) or decays_over_length else refused).append(change)
    return refused, noted


def check_resume(saved: TrainingConfig, current: TrainingConfig, source: str) -> List[str]:
    """ConfigError naming every refused difference; returns the noted ones."""
    refused, noted = resume_differences(saved, current)
    if refused:
        raise ConfigError(f"the configuration differs from the one {source} was trained with, in settings a "
                          f"resume must keep ({'; '.join(refused)}); resume with the checkpoint's settings "
                          f"(drop --preset/--config and those overrides), or start a new run under another --name")
    return noted

