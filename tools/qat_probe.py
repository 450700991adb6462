"""Probe QAT recipes quickly: quantize an fp32 network uniformly (or by a search result),
train it for a few hundred steps from the fp32 weights, and print the test accuracy
every 100 steps. Minutes per recipe instead of a pipeline run per recipe.

    python tools/qat_probe.py --model resnet20 --weights search.fp32.pt \\
        --data imagefolder:cifar10.zip --bits 2,1 --lr 3e-3 --steps 300
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from mpqc.data import load_dataset
from mpqc.data.splits import subset
from mpqc.evaluation import evaluate_accuracy
from mpqc.models import build_model, load_weights
from mpqc.quant.model import quantize_model
from mpqc.search.distributed import World, loader
from mpqc.search.loop import training_loss


def _accuracy(model, data) -> float:
    with torch.no_grad():
        return evaluate_accuracy(model, data).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", required=True, help="fp32 weights to start from")
    parser.add_argument("--data", required=True)
    parser.add_argument("--bits", required=True,
                        help="A,W for every layer, or a search/finetune JSON with 'layers'")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam rate, cosine to 0")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--distill", type=float, default=0.0)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--residual-bits", type=int, default=8,
                        help="bits of the codes shortcuts carry; 0: the codes of the layer "
                        "reading the same tensor (mpqc before library format 6)")
    args = parser.parse_args()

    torch.manual_seed(0)
    splits = load_dataset(args.data)
    model = build_model(args.model, num_classes=splits.num_classes)
    load_weights(model, args.weights)
    model.eval()
    if "," in args.bits:
        config = tuple(int(b) for b in args.bits.split(","))
    else:
        config = {l["name"]: (l["a"], l["w"]) for l in json.load(open(args.bits))["layers"]}
    calib = next(iter(loader(splits.train, 256, True, 0, World())))[0]
    qmodel = quantize_model(model, config, calib=calib,
                            residual_bits=args.residual_bits or None)
    test = subset(splits.test, args.test_images, 0)
    print(f"bits {args.bits} lr {args.lr} residual bits {args.residual_bits}: "
          f"start {_accuracy(qmodel, test):.4f}", flush=True)
    opt = torch.optim.Adam(qmodel.parameters(), lr=args.lr)
    teacher = model if args.distill > 0 else None
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for images, labels in loader(splits.train, 128, True, step, World()):
            qmodel.train()
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            opt.zero_grad()
            loss = training_loss(qmodel(images), labels, teacher, images, args.distill)
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0 or step == args.steps:
                print(f"step {step}: test {_accuracy(qmodel, test):.4f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
