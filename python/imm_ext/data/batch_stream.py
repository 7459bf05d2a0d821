"""`BatchStream`: an endless, seeded, rank-sharded and exactly resumable stream of training batches.

Epoch e is a permutation of the dataset drawn from the stream (seed, e) alone, so every rank computes
the same one; rank r keeps its entries r, r + world_size, r + 2 world_size, ... (drop_last=True first
cuts the permutation to a multiple of world_size, so ranks never share a sample within an epoch;
drop_last=False instead wraps it around to the next multiple, so the epoch is covered in full).
Batches are consecutive runs of a rank's shards of epochs 0, 1, 2, ...: a batch may span the end of
one epoch and the start of the next, so a dataset shorter than a batch simply cycles. Horizontal flips
(images only) are drawn per epoch from the stream (seed, e, rank). The position (epoch, index within
the rank's shard) is the whole state: `load_state_dict(state_dict())` resumes the same batches.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from .seeding import check_seed, derived_generator

# Stream tags keep the permutation, flip and per-batch draws independent of each other.
_PERMUTATION, _FLIPS, _BATCH_DRAW = 0, 1, 2


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return value


class BatchStream:
    """Endless iterator of (x, labels) batches of `batch_size` samples for one rank.

    Args:
        dataset: a map-style dataset of (x, label) items. Datasets with `tensors()` are indexed directly;
            datasets with `batch(indices, generator)` (random items, e.g. latents drawn from a stored
            posterior) draw each batch from a generator seeded by (seed, epoch, rank, position).
        batch_size: samples per batch on this rank.
        seed: the stream's seed (the same on every rank).
        rank, world_size: this rank's index and the number of ranks.
        hflip: flip each image horizontally with probability 1/2 (needs (C, H, W) samples).
        drop_last: how an epoch is split across ranks when world_size does not divide its size (see above).
    """

    def __init__(self, dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 hflip: bool = False, drop_last: bool = True):
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = check_seed(seed)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size={world_size}; got {rank}")
        for name, value in (("hflip", hflip), ("drop_last", drop_last)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style dataset (with __len__ and __getitem__); got {type(dataset).__name__}")
        self.dataset, self.hflip, self.drop_last = dataset, hflip, drop_last
        self.dataset_size = len(dataset)
        self.samples_per_rank = (self.dataset_size // world_size if drop_last
                                 else math.ceil(self.dataset_size / world_size))
        if self.samples_per_rank == 0:
            raise ValueError(f"the dataset has {self.dataset_size} samples, fewer than world_size={world_size}; "
                             f"pass drop_last=False to give every rank repeated samples")
        if hflip:
            shape = getattr(dataset, "sample_shape", None) or tuple(dataset[0][0].shape)
            if len(shape) != 3:
                raise ValueError(f"hflip needs image samples (C, H, W); this dataset's samples have shape {tuple(shape)}")
        in_memory = callable(getattr(dataset, "tensors", None)) and not callable(getattr(dataset, "batch", None))
        self._tensors = dataset.tensors() if in_memory else None
        self.epoch, self.position = 0, 0
        self._plan: Optional[Tuple[int, torch.Tensor, Optional[torch.Tensor]]] = None

    def _epoch_plan(self, epoch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """This rank's sample indices for the epoch and, with hflip, which of them to flip."""
        if self._plan is None or self._plan[0] != epoch:
            order = torch.randperm(self.dataset_size, generator=derived_generator(_PERMUTATION, self.seed, epoch))
            total = self.samples_per_rank * self.world_size
            order = order[:total] if self.drop_last else order.repeat(math.ceil(total / self.dataset_size))[:total]
            mine = order[self.rank::self.world_size]
            flips = None
            if self.hflip:
                generator = derived_generator(_FLIPS, self.seed, epoch, self.rank)
                flips = torch.rand(self.samples_per_rank, generator=generator) < 0.5
            self._plan = (epoch, mine, flips)
        return self._plan[1], self._plan[2]

    def _fetch(self, indices: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        if callable(getattr(self.dataset, "batch", None)):
            return self.dataset.batch(indices, generator)
        if self._tensors is not None:
            return self._tensors[0][indices], self._tensors[1][indices]
        items = [self.dataset[i] for i in indices.tolist()]
        return torch.stack([x for x, _ in items]), torch.tensor([int(label) for _, label in items], dtype=torch.int64)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        draw = derived_generator(_BATCH_DRAW, self.seed, self.epoch, self.rank, self.position)
        index_parts, flip_parts, needed = [], [], self.batch_size
        while needed:
            indices, flips = self._epoch_plan(self.epoch)
            stop = min(self.samples_per_rank, self.position + needed)
            index_parts.append(indices[self.position:stop])
            if flips is not None:
                flip_parts.append(flips[self.position:stop])
            needed -= stop - self.position
            self.epoch, self.position = (self.epoch + 1, 0) if stop == self.samples_per_rank else (self.epoch, stop)
        x, labels = self._fetch(torch.cat(index_parts), draw)
        if self.hflip:
            x = torch.where(torch.cat(flip_parts).view(-1, 1, 1, 1), x.flip(-1), x)
        return x, labels

    def state_dict(self) -> Dict[str, int]:
        """The position plus what it is only meaningful with (checked by load_state_dict)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size,
                "dataset_size": self.dataset_size, "drop_last": self.drop_last}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume at a saved position. Every rank sits at the same position, so any rank's state will do."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(); got {type(state).__name__}")
        missing = [k for k in ("epoch", "position", "seed", "world_size", "dataset_size", "drop_last") if k not in state]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}")
        for key in ("seed", "world_size", "dataset_size", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state[{key!r}] = {state[key]!r} does not match this stream's {getattr(self, key)!r}")
        epoch, position = _check_int("state['epoch']", state["epoch"], 0), _check_int("state['position']", state["position"], 0)
        if position >= self.samples_per_rank:
            raise ValueError(f"state['position'] must be < {self.samples_per_rank} (samples per rank); got {position}")
        self.epoch, self.position = epoch, position

    def __repr__(self) -> str:
        return (f"BatchStream(batch_size={self.batch_size}, seed={self.seed}, rank={self.rank}, "
                f"world_size={self.world_size}, hflip={self.hflip}, drop_last={self.drop_last}, "
                f"epoch={self.epoch}, position={self.position})")
