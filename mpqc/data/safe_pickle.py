"""Unpickling data files without running code: a pickle may call any importable
function, so only numpy's array-reconstruction globals are let through."""
import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mpqc.errors import DataError

try:  # numpy >= 2 (numpy.core is a deprecated alias of numpy._core there)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# Old pickles name numpy.core.*, new ones numpy._core.*; both map to the same objects, so
# loading an old file never imports the deprecated numpy.core alias.
_ALLOWED = {}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer  # protocol 5
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a data file") from None


def load_pickle(path: Path, encoding: str) -> Any:
    """Unpickle plain containers and numpy arrays from `path` (gunzipped if it ends in
    .gz); anything else, or an unreadable file, -> DataError."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            return _ArrayUnpickler(f, encoding=encoding).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused or corrupt pickle ({e}); "
                        "replace it with the original download") from None
    except (EOFError, OSError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError) as e:
        # unreadable files and gzip errors are OSError; garbled pickles raise the others
        raise DataError(f"{path}: unreadable, corrupt or truncated ({type(e).__name__}: "
                        f"{e}); replace it with the original download") from None
