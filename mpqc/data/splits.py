"""The result of loading a dataset, the deterministic validation split, and subsets."""
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset

from mpqc.data.arrays import ArrayDataset
from mpqc.errors import DataError


@dataclass(frozen=True)
class DatasetSplits:
    name: str                           # "mnist", "cifar10", "imagefolder"
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]   # (C, H, W) as the model takes it
    mean: tuple[float, ...]             # per-channel normalisation applied by the datasets
    std: tuple[float, ...]
    class_names: tuple[str, ...]


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")


def carve_val(train: ArrayDataset, val_fraction: float, seed: int,
              augment: bool) -> tuple[ArrayDataset, ArrayDataset]:
    """Split `train` into (train, val): val is the first round(N*val_fraction) of a
    seeded permutation, so the split is the same on every run and machine. Index sets
    are sorted to keep the original item order; only the train part is augmented."""
    check_val_fraction(val_fraction)
    perm = np.random.default_rng(seed).permutation(len(train))
    n_val = int(round(len(train) * val_fraction))
    return (train.select(np.sort(perm[n_val:]), augment=augment),
            train.select(np.sort(perm[:n_val]), augment=False))


def sample_indices(size: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` of range(size): the first `n` of a seeded permutation (what `subset` takes)."""
    return np.random.default_rng(seed).permutation(size)[:n]


def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """The first `n` items of a fixed random permutation (a reproducible random sample);
    `dataset` itself when n is None or n >= len(dataset). ArrayDatasets stay ArrayDatasets."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 0:
        raise DataError(f"subset size must be >= 0, got {n}")
    indices = sample_indices(len(dataset), n, seed)
    if isinstance(dataset, ArrayDataset):
        return dataset.select(indices)
    return Subset(dataset, indices.tolist())
