"""Pickle files of the processed dataset, read without running foreign code.

``dataset_info.pkl`` and ``mean_std_dict.pkl`` may come from the authors' download. A plain
``pickle.load`` would run any callable named in the file, so ``load_pickle`` uses an Unpickler that
only rebuilds plain containers (dict, list, tuple, set, str, numbers, bool, None) and numpy scalars
(``np.float64`` and friends, which the authors' statistics are). Anything else is refused.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from base import atomic
from base.errors import UserError

PROTOCOL = 4

_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core

# (module, name) a pickle may name -> the object it resolves to. Numpy scalars pickle as
# ``multiarray.scalar(dtype, raw_bytes)``; numpy 1.x files name ``numpy.core``, 2.x ``numpy._core``.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "bool"): bool,
    ("builtins", "bytes"): bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,  # bytes in protocol 2 files
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _NUMPY_CORE.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _NUMPY_CORE.multiarray.scalar,
}
_ALLOWED.update({("__builtin__", name): obj for (module, name), obj in list(_ALLOWED.items()) if module == "builtins"})


class _ForbiddenClassError(pickle.UnpicklingError):
    """The pickle names a class or function outside ``_ALLOWED``."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenClassError(f"the class {module}.{name} is not allowed") from None


def load_pickle(path: str | Path) -> Any:
    """Read a pickle holding only plain containers, numbers, strings and numpy scalars.

    Raises:
        UserError: the file is missing, unreadable, or names any other class or function.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the file {path} does not exist")
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle).load()
    except _ForbiddenClassError as exc:
        raise UserError(
            f"refusing to load {path}: {exc}; only plain dicts, lists, numbers, strings and numpy scalars are read"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"the file {path} is not a readable pickle ({exc}); recreate it") from None


def save_pickle(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(obj, handle, protocol=PROTOCOL)
    return path
