"""A progress bar for long loops outside training (prepare, encode, FID): tqdm when installed, else a
plain line on stderr every few seconds; silent with enabled=False."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

Item = TypeVar("Item")


def progress(items: Iterable[Item], *, total: Optional[int], description: str, enabled: bool = True,
             unit: str = "image") -> Iterator[Item]:
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=description, unit=unit, dynamic_ncols=True, file=sys.stderr)
        return
    started = last = time.perf_counter()
    done = 0
    for done, item in enumerate(items, start=1):
        yield item
        now = time.perf_counter()
        if now - last >= 5.0:
            last = now
            print(f"{description}: {done}{'/' + str(total) if total else ''} {unit}s, "
                  f"{done / (now - started):.1f}/s", file=sys.stderr, flush=True)
    print(f"{description}: {done} {unit}s in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
