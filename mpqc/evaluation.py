"""Accuracy of a float model on a dataset split (the fp32 reference of every result)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, dataset, batch_size: int = 256) -> Accuracy:
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return Accuracy(correct, total)
