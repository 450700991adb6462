"""A compiled library's own top-1 accuracy on the test split of its manifest's data.

The fine-tune step reports the accuracy of the PyTorch fake-quant model; this scores the
artifact that ships, image by image, where it runs (this machine or an RPC device), so
that the figure a user reads is the deployed network's, integer rounding included.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from mpqc.errors import ConfigError

CHUNK = 256  # images handed to the library per call (it runs them at its own batch)


@dataclass(frozen=True)
class LibraryAccuracy:
    correct: int
    images: int        # scored
    test_size: int     # of the whole test split
    device: str
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy}


def scored_indices(test_size: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """All test images, or `limit` of them drawn at random: test splits are often sorted
    by class (CIFAR-10 from an image folder is), so the first N would score a few classes.
    The draw is mpqc.data.subset's for the same seed, so a search run with --subset scores
    its fake-quant model on these same images."""
    from mpqc.data.splits import sample_indices
    if limit is None or limit >= test_size:
        return np.arange(test_size)
    if limit < 1:
        raise ConfigError(f"score at least one test image, not {limit}")
    return np.sort(sample_indices(test_size, limit, seed))


def library_accuracy(path, limit: int | None = None, device=None, progress: bool = False,
                     seed: int = 0) -> LibraryAccuracy:
    """Top-1 accuracy of the library at `path` on its data's test split (`limit` random
    images of it, or all), run on `device` (an RpcDevice) or here."""
    from tqdm import tqdm

    from mpqc import runtime
    from mpqc.build.network import NetworkSpec
    from mpqc.data import load_dataset

    lib = runtime.load(path, device=device)
    spec = NetworkSpec.from_json(lib.manifest["network"])
    if not spec.data:
        raise ConfigError(f"{lib.path.name} was built without --data: it has no test split "
                          "to be scored on; rebuild it with `mpqc compile --data ...`")
    test = load_dataset(spec.data, augment=False).test
    indices = scored_indices(len(test), limit, seed)
    start = time.perf_counter()
    correct = 0
    bar = tqdm(total=len(indices), desc=f"accuracy of {lib.path.name}", unit="image",
               leave=False, disable=not progress)
    for first in range(0, len(indices), CHUNK):
        items = [test[int(i)] for i in indices[first:first + CHUNK]]
        images = np.stack([x.numpy() for x, _ in items])
        labels = np.array([y for _, y in items])
        correct += int((lib(images).argmax(axis=1) == labels).sum())
        bar.update(len(items))
    bar.close()
    return LibraryAccuracy(correct=correct, images=len(indices), test_size=len(test),
                           device=str(device) if device is not None else "host",
                           seconds=time.perf_counter() - start)
