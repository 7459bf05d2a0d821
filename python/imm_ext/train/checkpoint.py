"""Checkpoint files: atomic writes, verified loads, the run directory's rotation and `--resume auto`.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so it is read with
torch.load(weights_only=True) and a file from elsewhere cannot run code. It is written atomically:
to a temporary file in the same directory, flushed and fsync'ed, renamed over the final name with
os.replace, then the directory is fsync'ed, so a crash at any moment leaves either the previous
checkpoint or the new one, never a torn file under a checkpoint name. It carries a SHA-256 digest of
its content (payload_digest.py), checked at every load, so a corrupted weight is refused, not trained on.
Rotation deletes an older checkpoint only once a newer one is in place; `--resume auto` takes the
newest checkpoint that loads and verifies, and moves a corrupt newer one aside (renamed, never deleted).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .payload_digest import payload_digest

FORMAT = "imm_ext.train.checkpoint"
VERSION = 2  # 2: with a content digest; version 1 files (no digest) still load
READABLE_VERSIONS = (1, 2)
_NAME = re.compile(r"^step-(\d{8,})\.pt$")
_TEMPORARY = re.compile(r"^\.step-\d{8,}\.pt\..*\.tmp$")
REQUIRED_KEYS = ("format", "version", "step", "model", "config")
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or not one of ours."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_atomic(payload: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write `payload` to `path` atomically (temporary file, fsync, os.replace, fsync of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError if it is missing, truncated,
    corrupt, holds anything but tensors and plain values, or is not an imm_ext training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, zipfile errors ...
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                              f"resume from an earlier checkpoint in the same directory") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an imm_ext training checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}")
    if payload["version"] not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {payload['version']!r}; "
                              f"this imm_ext reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if payload["version"] >= 2:
        stored = payload.pop("digest", None)
        if not isinstance(stored, str) or payload_digest(payload) != stored:
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its content does not match the digest "
                                  f"written with it; resume from an earlier checkpoint in the same directory")
    return payload


def list_checkpoints(directory: Union[str, Path]) -> List[Path]:
    """The step-NNNNNNNN.pt files of `directory`, oldest step first (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), entry) for entry in directory.iterdir()
             if (match := _NAME.match(entry.name)) and entry.is_file()]
    return [entry for _, entry in sorted(found)]


def latest_checkpoint(directory: Union[str, Path]) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(payload: Dict[str, Any], directory: Union[str, Path], keep: int) -> Path:
    """Write `payload` (with its digest) as step-NNNNNNNN.pt in `directory` atomically, then delete all
    but the newest `keep` (the file just written is always among them)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    payload["digest"] = payload_digest(payload)
    path = save_atomic(payload, Path(directory) / checkpoint_name(int(payload["step"])))
    for old in list_checkpoints(directory)[:-max(keep, 1)]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def remove_orphaned_temporaries(directory: Union[str, Path]) -> List[Path]:
    """Delete the temporary files that writers killed mid-write left behind (call it only while owning
    the run directory: a live writer's temporary looks the same). Returns what was removed."""
    directory = Path(directory)
    removed = [entry for entry in directory.iterdir() if _TEMPORARY.match(entry.name)] if directory.is_dir() else []
    for entry in removed:
        entry.unlink(missing_ok=True)
    return removed


def newest_good_checkpoint(directory: Union[str, Path], warn=None) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """(path, payload) of the newest checkpoint of `directory` that loads and verifies, or None. Newer
    ones that do not are renamed to *.pt.corrupt (kept for inspection, out of rotation) and reported
    through `warn(message)`. Call it only while owning the run directory."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            aside = path.with_name(path.name + CORRUPT_SUFFIX)
            os.replace(path, aside)
            if warn is not None:
                warn(f"warning: {error}; moved it aside to {str(aside)!r}")
    return None


def resolve_resume(resume: str, checkpoint_directory: Union[str, Path]) -> Optional[Path]:
    """`--resume auto`: the newest checkpoint of the run (None if there is none yet); otherwise the path
    (a directory: its newest checkpoint)."""
    if resume == "auto":
        return latest_checkpoint(checkpoint_directory)
    path = Path(resume)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"--resume {resume!r}: the directory holds no step-*.pt checkpoint")
        return found
    if not path.is_file():
        raise CheckpointError(f"--resume {resume!r}: no such checkpoint file")
    return path
