"""Datasets: `mnist` (embedded), `cifar10:DIR` (the python release), `imagefolder:PATH`
(folder or .zip of train/<class>/ and test/<class>/ images), all as in-memory splits."""
import os
from pathlib import Path

from mpqc.data.arrays import ArrayDataset
from mpqc.data.cifar10 import load_cifar10
from mpqc.data.imagefolder import load_imagefolder
from mpqc.data.mnist import load_mnist
from mpqc.data.splits import DatasetSplits, check_val_fraction, subset
from mpqc.errors import DataError

SPEC_FORMS = ("mnist", "cifar10:DIR", "imagefolder:PATH")

__all__ = ["DatasetSplits", "ArrayDataset", "load_dataset", "default_cache_dir", "subset",
           "SPEC_FORMS"]


def default_cache_dir() -> Path:
    """$MPQC_CACHE, else ~/.cache/mpqc (only imagefolder decodes are cached)."""
    env = os.environ.get("MPQC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mpqc"


def load_dataset(spec: str, cache_dir: str | Path | None = None, val_fraction: float = 0.1,
                 seed: int = 0, augment: bool = True) -> DatasetSplits:
    """Load a dataset by spec. The validation split is carved from train with `seed`
    (mnist uses its file's own 10k validation split and ignores val_fraction/seed);
    `augment` applies to the train split of 32x32 colour sets only."""
    check_val_fraction(val_fraction)
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "mnist" and not sep:
        return load_mnist()
    if kind in ("cifar10", "imagefolder") and arg.strip():
        path = Path(arg.strip()).expanduser()
        if kind == "cifar10":
            return load_cifar10(path, val_fraction, seed, augment)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return load_imagefolder(path, cache, val_fraction, seed, augment)
    problem = "needs a path after the colon" if kind in ("cifar10", "imagefolder") else \
        "is not one mpqc knows"
    raise DataError(f"dataset spec {spec!r} {problem}; use one of: mnist, cifar10:DIR "
                    "(cifar-10-batches-py folder), imagefolder:PATH (folder or .zip with "
                    "train/<class>/ and test/<class>/)")
