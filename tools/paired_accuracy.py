"""Compare quantized checkpoints on the same test images, image by image (McNemar).

    .venv/bin/python tools/paired_accuracy.py --data imagefolder:../shared/data/cifar10-jpeg-q75.zip \\
        searched.pt uniform.pt [more pairs ...]

Each pair prints both accuracies, how many images only one of them gets right, and the
two-sided p of McNemar's test (normal approximation): whether the difference is more
than the test split's sampling noise. Checkpoints are what `mpqc search` writes (.pt).
"""
import argparse
import math

import torch
from torch.utils.data import DataLoader

from mpqc.data import load_dataset
from mpqc.quant.model import load_quantized


def hits(path: str, test) -> torch.Tensor:
    model, _ = load_quantized(path)
    model.eval()
    out = []
    with torch.no_grad():
        for images, labels in DataLoader(test, batch_size=500):
            out.append(model(images).argmax(1) == labels)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset spec (its test split)")
    parser.add_argument("checkpoints", nargs="+", help="pairs: first second [first second ...]")
    args = parser.parse_args()
    if len(args.checkpoints) % 2:
        parser.error("give the checkpoints in pairs")
    test = load_dataset(args.data).test
    pairs = zip(args.checkpoints[::2], args.checkpoints[1::2])
    for first, second in pairs:
        a, b = hits(first, test), hits(second, test)
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        z = (only_a - only_b) / math.sqrt(max(only_a + only_b, 1))
        p = math.erfc(abs(z) / math.sqrt(2))
        print(f"{first}: {a.float().mean():.2%}  {second}: {b.float().mean():.2%}  "
              f"only first right {only_a}, only second right {only_b}, McNemar z {z:.2f}, "
              f"two-sided p {p:.3f}")


if __name__ == "__main__":
    main()
