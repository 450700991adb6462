"""Test accuracy of the quantized network a running (or killed) search or fine-tune has
checkpointed: watch a long fine-tune without stopping it. Reads the checkpoint of
`mpqc search` / `mpqc pipeline` (search.ckpt in a pipeline workdir), one thread.

    python tools/checkpoint_accuracy.py --model resnet20 \\
        --data imagefolder:cifar10.zip r20/search.ckpt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mpqc.data import load_dataset
from mpqc.data.splits import subset
from mpqc.evaluation import evaluate_accuracy
from mpqc.models import build_model
from mpqc.quant.model import quantize_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--test-images", type=int, default=2000)
    args = parser.parse_args()

    torch.set_num_threads(1)   # beside a training run that holds the other cores
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"{args.checkpoint}: no such checkpoint (a pipeline writes it into its "
                         "workdir as search.ckpt)")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if "config" not in state or "qat_state" not in state:
        raise SystemExit(f"{args.checkpoint}: phase {state.get('phase')!r}, no configuration "
                         "chosen yet (the search is still running)")
    splits = load_dataset(args.data)
    model = build_model(args.model, num_classes=splits.num_classes)
    model.load_state_dict(state["fp32_state"])
    config = {name: tuple(pair) for name, pair in state["config"].items()}
    qmodel = quantize_model(model.eval(), config, input_shape=splits.input_shape)
    qmodel.load_state_dict(state["qat_state"])
    test = subset(splits.test, args.test_images, 0)
    print(f"phase {state['phase']}, epoch {state['epoch']}: "
          f"{evaluate_accuracy(qmodel, test).accuracy:.2%} on {len(test)} test images")


if __name__ == "__main__":
    main()
