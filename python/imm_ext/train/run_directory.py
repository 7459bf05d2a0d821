"""One owner per run directory: an advisory lock held for the life of a training run.

Two runs writing one directory would interleave their logs and rotate each other's checkpoints away.
`RunDirectoryLock` takes an exclusive `fcntl.flock` on `<run dir>/.lock` (non-blocking) and writes who
holds it (pid, host, start time, command line) into the file. The kernel drops the lock when the holder
exits in any way, SIGKILL included, so a stale lock never needs cleaning up; a second run fails at once
with `RunDirectoryBusy` naming the holder. Where flock does not exist (Windows) the lock is skipped.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from .config import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LOCK_FILE = ".lock"


class RunDirectoryBusy(ConfigError):
    """Another live process owns the run directory."""


class RunDirectoryLock:
    """`with RunDirectoryLock(run_dir):` owns run_dir (created if needed) until the block ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._descriptor: Optional[int] = None

    def __enter__(self) -> "RunDirectoryLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        path = self.run_dir / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            raise RunDirectoryBusy(f"run directory {str(self.run_dir)!r} is in use by another run ({holder}); "
                                   f"wait for it to end, or give this run another --name") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "command": " ".join(sys.argv)[:500]}).encode() + b"\n")
        self._descriptor = descriptor
        return self

    def __exit__(self, *exc_info) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor releases the flock
            self._descriptor = None


def _read_holder(descriptor: int) -> str:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode())
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
