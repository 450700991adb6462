#!/usr/bin/env python
"""Evaluate a model (default: the pretrained ResNet-20) on a dataset's test split.

    .venv/bin/python tools/eval_resnet20.py \
        --weights ../shared/models/resnet20-12fca82f.th \
        --data imagefolder:../shared/data/cifar10-jpeg-q75.zip

Prints one JSON object (model, weights, data, images, correct, accuracy, seconds).
Errors mpqc raises on purpose become one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from mpqc.errors import MpqcError
from mpqc.models import BUILTIN_MODELS, build_model, load_weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20",
                        help="resnet20, democnn or package.module:function (default resnet20)")
    parser.add_argument("--weights", help="state_dict checkpoint to load (default: none, fresh)")
    parser.add_argument("--data", help="dataset spec for mpqc.data (default: the model's own)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "mpqc"),
                        help="where decoded datasets are cached (default ~/.cache/mpqc)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    return parser.parse_args(argv)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int) -> tuple[int, int]:
    """(correct, total) of top-1 predictions over `dataset`."""
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct, total


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from mpqc.data import load_dataset
    except ImportError as exc:
        raise MpqcError(f"mpqc.data.load_dataset is not available ({exc}); "
                        f"update the checkout") from exc
    spec = args.data or (BUILTIN_MODELS[args.model].default_data
                         if args.model in BUILTIN_MODELS else None)
    if spec is None:
        raise MpqcError(f"model {args.model!r} has no default dataset: pass --data")
    start = time.perf_counter()
    test = load_dataset(spec, cache_dir=args.cache_dir).test
    if args.limit:
        test = Subset(test, range(min(args.limit, len(test))))
    model = build_model(args.model)
    if args.weights:
        load_weights(model, args.weights)
    correct, total = evaluate(model, test, args.batch_size)
    return {"model": args.model, "weights": args.weights, "data": spec, "split": "test",
            "images": total, "correct": correct, "accuracy": correct / max(total, 1),
            "seconds": round(time.perf_counter() - start, 2)}


if __name__ == "__main__":
    try:
        print(json.dumps(main(), indent=2))
    except MpqcError as exc:
        print(f"eval_resnet20: error: {exc}", file=sys.stderr)
        sys.exit(2)
