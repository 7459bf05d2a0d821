"""A SHA-256 digest of a checkpoint's content, so that a flipped bit inside a weight is caught at load.

torch.save stores tensor bytes uncompressed and torch.load does not check them: a corrupted weight loads
silently. The digest is taken over the payload itself (not the file), in a canonical order, so it is
computed before writing and recomputed from what torch.load returns: every tensor's dtype, shape and
bytes, and every plain value (None, bool, int, float, str, bytes, lists, tuples, dicts with keys in
sorted order) with a type tag, so that equal digests mean equal content.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch


def payload_digest(payload: Any) -> str:
    """Hex SHA-256 of `payload`'s content; TypeError for values a checkpoint must not hold."""
    digest = hashlib.sha256()
    _update(digest, payload)
    return digest.hexdigest()


def _update(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{str(value.dtype)}{tuple(value.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _update(digest, key)
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):  # pickling keeps the type, but both read as sequences
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif isinstance(value, (bytes, bytearray)):
        digest.update(b"B%d:" % len(value) + bytes(value))
    elif value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value).encode()  # float repr round-trips exactly
        digest.update(f"{type(value).__name__}{len(text)}:".encode() + text)
    else:
        raise TypeError(f"a checkpoint holds only tensors and plain values; got {type(value).__name__}")
