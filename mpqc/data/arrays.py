"""In-memory image datasets: whole splits live in numpy arrays (a few hundred MB at most),
items are normalised CHW float32 tensors."""
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mpqc.errors import DataError

# ImageNet statistics: the pretrained CIFAR ResNet-20 used with mpqc was trained with them.
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

_PAD = 4  # the standard CIFAR recipe: 4-pixel zero padding, random crop, random flip


class ArrayDataset(Dataset):
    """`images` uint8 (N,H,W,C) in 0..255 or float32 in [0,1]; `labels` int64 (N,).

    Items are (float32 tensor (C,H,W) normalised by mean/std, int label). With
    `augment`, a random 4-pixel-padded crop and a random horizontal flip are applied
    before normalisation (so the padding is black, as in torchvision's recipe); the
    randomness comes from torch's global generator, which DataLoader seeds per worker.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float],
                 std: Sequence[float], augment: bool = False):
        if images.ndim != 4 or images.dtype not in (np.uint8, np.float32):
            raise DataError(f"ArrayDataset: images must be uint8 or float32 (N,H,W,C), "
                            f"got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise DataError(f"ArrayDataset: {len(images)} images but labels of shape "
                            f"{labels.shape}")
        channels = images.shape[3]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"ArrayDataset: {channels} channels but mean/std of length "
                            f"{len(mean)}/{len(std)}")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.augment:
            x = _crop_flip(x)
        return (x - self._mean) / self._std, int(self.labels[index])

    def select(self, indices: np.ndarray, augment: bool | None = None) -> "ArrayDataset":
        """The items at `indices` (copied), same normalisation; keeps .images/.labels."""
        return ArrayDataset(self.images[indices], self.labels[indices], self.mean,
                            self.std, self.augment if augment is None else augment)

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, image={tuple(self.images.shape[1:])}, "
                f"dtype={self.images.dtype}, augment={self.augment})")


def _crop_flip(x: torch.Tensor) -> torch.Tensor:
    _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD))
    i, j = torch.randint(0, 2 * _PAD + 1, (2,)).tolist()
    x = padded[:, i:i + h, j:j + w]
    return x.flip(-1) if torch.rand(()) < 0.5 else x
