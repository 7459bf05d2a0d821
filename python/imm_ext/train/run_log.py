"""What a run reports while it trains: a progress bar (tqdm when installed, else a plain line every
log interval), one JSON object per logged step in log.jsonl, and TensorBoard scalars when the
tensorboard package is installed. Only rank 0 creates one (`RunLog`)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

try:
    from tqdm import tqdm
except ImportError:  # optional
    tqdm = None

LOG_FILE = "log.jsonl"


class LogError(ValueError):
    """log.jsonl is damaged somewhere other than its last line."""


def read_log(run_dir: Path) -> List[dict]:
    """The entries of log.jsonl. A torn last line (a write cut short by a kill or a full disk) is
    dropped; a damaged line before it raises LogError naming the file and the line."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if all(not rest.strip() for rest in lines[number:]):
                break  # the torn tail
            raise LogError(f"{str(path)!r} line {number} is not a JSON object ({error}); repair or remove "
                           f"that line") from None
        entries.append(entry)
    return entries


def truncate_log(run_dir: Path, last_step: int) -> None:
    """Keep the entries up to `last_step` (what follows a resumed checkpoint is rewritten, a torn tail is
    dropped), replacing the file atomically."""
    path = Path(run_dir) / LOG_FILE
    kept = [entry for entry in read_log(run_dir) if entry.get("step", 0) <= last_step]
    temporary = path.with_name(f".{LOG_FILE}.tmp")
    temporary.write_text("".join(json.dumps(entry) + "\n" for entry in kept))
    os.replace(temporary, path)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class RunLog:
    """Progress bar, log.jsonl and TensorBoard for steps first_step + 1 .. total_steps."""

    def __init__(self, run_dir: Path, first_step: int, total_steps: int, progress: bool = True,
                 tensorboard: bool = True):
        self.run_dir, self.total_steps, self.first_step = Path(run_dir), total_steps, first_step
        self.log_file = open(self.run_dir / LOG_FILE, "a", buffering=1)
        self.started = time.perf_counter()
        self.bar = None
        if progress and tqdm is not None:
            self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.plain_progress = progress and self.bar is None
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=first_step + 1)
            except ImportError:  # tensorboard is optional
                self.writer = None

    def rate(self, step: int) -> float:
        elapsed = time.perf_counter() - self.started
        return (step - self.first_step) / elapsed if elapsed > 0 else 0.0

    def advance(self, step: int) -> None:
        """Every step: move the progress bar."""
        if self.bar is not None:
            self.bar.update(1)

    def record(self, step: int, values: Dict[str, float]) -> None:
        """A logged step: one JSON line, TensorBoard scalars, and a plain progress line without tqdm."""
        rate = self.rate(step)
        entry = {"step": step, **values, "steps_per_s": rate, "elapsed_s": time.perf_counter() - self.started}
        self.log_file.write(json.dumps(entry) + "\n")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values.get('loss', math.nan):.4g}", refresh=False)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)
        if self.plain_progress:
            eta = (self.total_steps - step) / rate if rate > 0 else math.inf
            print(f"step {step}/{self.total_steps}  loss {values.get('loss', math.nan):.4g}  {rate:.2f} steps/s  "
                  f"ETA {_format_duration(eta)}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def scalars(self, prefix: str, step: int, values: Dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values.get('loss', math.nan):.4g}", refresh=False)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.log_file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def log_values(loss: float, diagnostics: Dict[str, float], lr: float, grad_norm: Optional[float],
               skipped: int) -> Dict[str, float]:
    values = {"loss": loss, "lr": lr, "skipped_steps": skipped, **diagnostics}
    if grad_norm is not None:
        values["grad_norm"] = grad_norm
    return values
