"""Keeping freed memory in the process, so that a training step reuses the pages of the last one.

PyTorch's CPU tensors come from malloc. glibc maps every block above its mmap threshold (at most 32
MiB, often 128 KiB) as fresh pages and unmaps it on free, so each step's large activations and
gradients are page-faulted in and zeroed by the kernel again, on every step; on a virtual machine
that hands freed memory back to its host, each first touch is slower still. `keep_freed_memory()`
asks glibc (mallopt) to serve every block from its heap and never to trim it: once the heap has grown
to a loop's working set, its freed blocks are reused without faults (a single reuse can still land on
new heap where other allocations split the freed block). The cost is that the process keeps its
peak memory while the setting holds, which a training loop reaches on its first step anyway;
`freed_memory_kept()` holds it for a block (a training run) and gives the memory back after.
"""
from __future__ import annotations

import contextlib
import ctypes
import platform
from typing import Iterator

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2 ** 31 - 1  # the largest value mallopt's int takes: the heap's top is never given back
_DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's defaults
_DEFAULT_MMAP_MAX = 65536


def _glibc():
    """The process's C library where it is glibc (its malloc takes these settings), else None."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def keep_freed_memory() -> bool:
    """Make freed memory stay in this process for reuse (glibc malloc; process-wide, until
    release_freed_memory()).

    Returns True where it took effect, False where the C library is not glibc (the call then changes
    nothing)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def release_freed_memory() -> None:
    """glibc's default mmap and trim limits again, and the kept free memory given back to the system."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """keep_freed_memory() for the block, release_freed_memory() after it: what a CPU training run does
    (`train.keep_freed_memory`). Yields whether it took effect."""
    kept = keep_freed_memory()
    try:
        yield kept
    finally:
        if kept:
            release_freed_memory()
