"""CIFAR-10 in the original python release: cifar-10-batches-py/{data_batch_1..5,
test_batch,batches.meta}, pickled (Python 2) dicts with bytes keys."""
from pathlib import Path

import numpy as np

from mpqc.data.arrays import CIFAR_MEAN, CIFAR_STD, ArrayDataset
from mpqc.data.safe_pickle import load_pickle
from mpqc.data.splits import DatasetSplits, carve_val
from mpqc.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck")
_HINT = "extract cifar-10-python.tar.gz and pass its folder: cifar10:DIR"


def find_batches(root: Path) -> Path:
    """`root` itself or root/cifar-10-batches-py, whichever holds the batch files."""
    if not root.exists():
        raise DataError(f"cifar10 folder {root} does not exist; {_HINT}")
    if not root.is_dir():
        raise DataError(f"cifar10:{root} is not a folder; {_HINT}")
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / TRAIN_FILES[0]).is_file():
            missing = [n for n in (*TRAIN_FILES, TEST_FILE) if not (candidate / n).is_file()]
            if missing:
                raise DataError(f"{candidate} lacks {', '.join(missing)}; {_HINT}")
            return candidate
    raise DataError(f"no data_batch_1 in {root} or {root / 'cifar-10-batches-py'}; {_HINT}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (N,32,32,3) NHWC, int64 labels)."""
    batch = load_pickle(path, encoding="bytes")
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32 or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 batch (want a dict with b'data' uint8 "
                        f"(N,3072) and b'labels'); {_HINT}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape} "
                        f"or outside 0..9; {_HINT}")
    # rows are planar CHW (1024 R, 1024 G, 1024 B); the datasets keep NHWC like the others
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def read_class_names(folder: Path) -> tuple[str, ...]:
    path = folder / "batches.meta"
    if not path.is_file():
        return CLASS_NAMES
    meta = load_pickle(path, encoding="bytes")
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{path}: no list of 10 b'label_names'; delete it or {_HINT}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(root: Path, val_fraction: float, seed: int, augment: bool) -> DatasetSplits:
    folder = find_batches(root)
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    train = ArrayDataset(np.concatenate([p[0] for p in parts]),
                         np.concatenate([p[1] for p in parts]), CIFAR_MEAN, CIFAR_STD)
    test = ArrayDataset(*read_batch(folder / TEST_FILE), CIFAR_MEAN, CIFAR_STD)
    train, val = carve_val(train, val_fraction, seed, augment)
    return DatasetSplits("cifar10", train, val, test, num_classes=10,
                         input_shape=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD,
                         class_names=read_class_names(folder))
