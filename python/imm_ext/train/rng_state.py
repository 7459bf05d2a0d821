"""Every random number generator a training run draws from, captured and restored as tensors and plain
values (so checkpoints load with torch.load(weights_only=True)): Python's `random`, numpy's global
generator, torch's CPU generator, every CUDA device's generator, and named torch.Generator objects."""
from __future__ import annotations

import random
from typing import Any, Dict, Mapping

import numpy as np
import torch


def capture_rng_state(generators: Mapping[str, torch.Generator]) -> Dict[str, Any]:
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: generator.get_state() for name, generator in generators.items()},
    }


def restore_rng_state(state: Dict[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(f"the checkpoint holds CUDA generator states for {len(state['cuda'])} devices; "
                             f"this process sees {torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = sorted(set(generators) - set(state["generators"]))
    if missing:
        raise ValueError(f"the checkpoint has no state for the generator(s) {missing}")
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
