"""Features of a (layer shape, a, w, threads) for the latency predictor.

A layer's time is two kernels: the activation bit-packing and the convolution with its
epilogue; they scale with different work, so each has its own features and model. The
work is known exactly (a*w popcounts per packed word of every window; one pass over the
input per activation bit; one epilogue per output), so the features are those counts
(in logs, since latencies span four decades) plus what decides how fast the kernel runs
them: the shape, the register tiles the schedule fits to it (a 7-wide output row can
only be tiled 1 or 7 wide, which is why 7x7 layers run slower per popcount), the
accumulator lane width and which packing the layout allows.
"""
from __future__ import annotations

import math

import numpy as np

from mpqc.latency.records import LayerShape
from mpqc.schedules.knobs import channel_tile, largest_divisor_at_most
from mpqc.schedules.pack_x86 import movemask_applies
from mpqc.schedules.spec import ConvSpec, pack_word_for

PARTS = ("conv", "pack")
FEATURES = {
    "conv": ("a", "w", "aw", "threads", "kernel", "stride", "out_w", "cin", "cout",
             "word_bits", "words", "lane_use", "acc_bits", "tile_w", "tile_co", "w_tiles",
             "co_tiles",
             "reduction", "accumulators", "tile_outputs", "log_popcounts", "log_outputs",
             "log_weight_bytes", "log_in_bytes", "log_weight_tile_bytes", "log_row_bytes"),
    "pack": ("a", "threads", "h", "w_px", "cin", "word_bits", "words", "lane_use",
             "movemask_layout", "log_pack_bits", "log_words_written", "padding"),
}


def _counts(shape: LayerShape, a: int, w: int, word_bits: int, tiles: tuple[int, int]) -> dict:
    oh, ow = shape.out_hw
    word = pack_word_for(shape.cin, word_bits)
    spec = ConvSpec(n=1, h=shape.h, w=shape.w, cin=shape.cin, cout=shape.cout,
                    kernel=shape.kernel, stride=shape.stride, padding=shape.padding,
                    a_bits=a, w_bits=w, word_bits=word)
    words = spec.words
    hp, wp = shape.h + 2 * shape.padding, shape.w + 2 * shape.padding
    tile_w = largest_divisor_at_most(ow, tiles[0])
    tile_co = channel_tile(shape.cout, tiles[1])
    return {
        "a": a, "w": w, "aw": a * w, "kernel": shape.kernel, "stride": shape.stride,
        "out_w": ow, "h": shape.h, "w_px": shape.w, "cin": shape.cin, "cout": shape.cout,
        "word_bits": word, "words": words, "lane_use": shape.cin / (words * word),
        # popcounts add in the word's lane width where the sum fits (narrower lanes,
        # more per register); x86 packs with a byte movemask where 16 channels line up
        "acc_bits": int(spec.acc_dtype[3:]), "movemask_layout": int(movemask_applies(spec)),
        "tile_w": tile_w, "tile_co": tile_co, "w_tiles": ow // tile_w,
        "co_tiles": shape.cout // tile_co, "reduction": words * shape.kernel ** 2,
        "padding": shape.padding,
        "popcounts": a * w * words * shape.kernel ** 2 * oh * ow * shape.cout,
        "outputs": oh * ow * shape.cout,
        "pack_bits": a * shape.h * shape.w * shape.cin,
        "words_written": a * hp * wp * words,
        "weight_bytes": w * words * word // 8 * shape.kernel ** 2 * shape.cout,
        "in_bytes": a * hp * wp * words * word // 8,
        # register and cache pressure of one output tile: its accumulators (one per bit
        # pair when the bit loops are unrolled), the weights it streams, the input rows
        "accumulators": tile_w * tile_co * a * w,
        "tile_outputs": tile_w * tile_co,
        "weight_tile_bytes": w * words * word // 8 * shape.kernel ** 2 * tile_co,
        "row_bytes": a * wp * words * word // 8 * shape.kernel,
    }


def feature_matrix(part: str, rows, word_bits: int, tiles: tuple[int, int]) -> np.ndarray:
    """rows: iterable of (LayerShape, a, w, threads) -> one feature row each."""
    out = []
    for shape, a, w, threads in rows:
        c = _counts(shape, a, w, word_bits, tiles)
        c["threads"] = threads
        out.append([math.log(c[name[4:]]) if name.startswith("log_") else c[name]
                    for name in FEATURES[part]])
    return np.array(out, dtype=np.float64)


def analytic_terms(part: str, rows, word_bits: int, tiles: tuple[int, int]) -> np.ndarray:
    """The work of the kernel per thread, and a constant (call overhead): the basis of
    the linear first guess that the trees then correct."""
    names = {"conv": ("popcounts", "outputs"), "pack": ("pack_bits", "words_written")}[part]
    out = []
    for shape, a, w, threads in rows:
        c = _counts(shape, a, w, word_bits, tiles)
        out.append([c[n] / threads for n in names] + [1.0])
    return np.array(out, dtype=np.float64)
