"""What to measure: the layers of a model, or random layer shapes for the predictor.

The random space covers the bit-serial layers of CIFAR and ImageNet ResNets and
MobileNet-style pointwise convolutions at batch 1: feature maps from 4x4 to 56x56,
16 to 512 channels, 1x1 and 3x3 kernels, stride 1 and 2. Shapes whose one-bit work is
huge (ImageNet layer1 widths at 56x56 with 512 channels) are not in any such network and
only slow the measurement down, so the MAC count is capped.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from mpqc.errors import ConfigError
from mpqc.latency.records import LayerShape
from mpqc.schedules.spec import BIT_RANGE

SIZES = (4, 7, 8, 14, 16, 28, 32, 56)
CHANNELS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MAX_MACS = 2.5e8  # one ResNet-18 layer1 3x3 conv is 1.16e8


@dataclass(frozen=True)
class Job:
    shape: LayerShape
    a_bits: int
    w_bits: int
    layers: tuple[str, ...] = ()  # model layers with this shape (informative)


def parse_bits(text: str) -> tuple[int, ...]:
    """'1,2,3,4' or '1-4' -> (1, 2, 3, 4), each in 1..8."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            bits = tuple(range(lo, hi + 1))
        else:
            bits = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"bit-widths {text!r}: give a list like 1,2,3,4 or a range like 1-4") \
            from None
    bad = [b for b in bits if b not in BIT_RANGE]
    if not bits or bad:
        raise ConfigError(f"bit-widths {text!r}: {bad or 'none'} outside 1..8")
    return tuple(sorted(set(bits)))


def model_jobs(layers, a_bits, w_bits) -> list[Job]:
    """Every (distinct shape, a, w) of the model's quantizable layers."""
    by_shape: dict[LayerShape, list[str]] = {}
    for layer in layers:
        if layer.quantizable:
            by_shape.setdefault(LayerShape.from_layer(layer), []).append(layer.name)
    if not by_shape:
        raise ConfigError("the model has no quantizable layer to measure")
    return [Job(shape, a, w, tuple(names)) for shape, names in by_shape.items()
            for a in a_bits for w in w_bits]


def random_shapes(count: int, seed: int = 0) -> list[LayerShape]:
    """`count` distinct random conv shapes (stride-2 maps at least 8x8, 3x3 padded 1)."""
    if count < 1:
        raise ConfigError(f"--count {count}: measure at least one shape")
    rng = random.Random(seed)
    shapes: list[LayerShape] = []
    seen = set()
    while len(shapes) < count:
        size = rng.choice(SIZES)
        kernel = rng.choice((1, 3, 3))
        stride = rng.choice((1, 1, 1, 2)) if size >= 8 else 1
        shape = LayerShape("conv2d", size, size, rng.choice(CHANNELS), rng.choice(CHANNELS),
                           kernel, stride, kernel // 2)
        if shape.macs <= MAX_MACS and shape not in seen:
            seen.add(shape)
            shapes.append(shape)
    return shapes


def random_jobs(count: int, seed: int, a_bits, w_bits) -> list[Job]:
    """One random (a, w) per random shape: shapes, not rows, are what the predictor must
    generalise over, so many shapes beat all pairs of few shapes."""
    rng = random.Random(seed + 1)
    return [Job(shape, rng.choice(a_bits), rng.choice(w_bits))
            for shape in random_shapes(count, seed)]
