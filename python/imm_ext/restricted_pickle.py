"""Unpickling that runs nothing from the file: only the globals named in an allowlist are resolved,
so a pickle can rebuild plain containers and the types the caller admits, and anything else (a class
that executes code when it is constructed, `os.system`, `builtins.eval`) is refused with an error that
names it. Persistent ids (how torch.save refers to storages) are refused unless the caller sets
`persistent_load` (torch.load does, with its own storage reader)."""
from __future__ import annotations

import io
import pickle
from typing import Any, Dict, Tuple


class UnsafePickleError(ValueError):
    """The pickle names a global outside the allowlist, or is not a readable pickle."""


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose find_class resolves only `allowed[(module, name)]`."""

    def __init__(self, file, allowed: Dict[Tuple[str, str], Any], *, source: str, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.allowed, self.source = allowed, source

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise UnsafePickleError(f"{self.source} refers to {module}.{name}, which is not allowed here (a pickle may "
                                    f"run code through the globals it names; only plain data is read)")
        return self.allowed[(module, name)]


def restricted_loads(data: bytes, allowed: Dict[Tuple[str, str], Any], *, source: str,
                     encoding: str = "ASCII") -> Any:
    """The object pickled in `data`, rebuilt with only the allowed globals; UnsafePickleError otherwise."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError, ValueError,
            UnicodeDecodeError) as error:
        raise UnsafePickleError(f"{source} is not a readable pickle ({type(error).__name__}: {error})") from None


def numpy_array_globals() -> Dict[Tuple[str, str], Any]:
    """What pickled numpy arrays and scalars need: the reconstructors, ndarray and dtype, under numpy 1's
    and 2's module names. The values' bytes are then set from the pickle's data, not computed."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar  # a numpy scalar from its dtype and bytes
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _latin1_encode  # how protocol 2 spells bytes under Python 3
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"the pickle calls _codecs.encode with {encoding!r}; only latin1 bytes are read")
    return text.encode("latin1")
