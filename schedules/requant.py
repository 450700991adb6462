"""Fixed-point requantization constants from a float rescale.

A quantized layer's output code is clamp(round(acc * scale[co] + offset[co])); the
kernels compute it in integers as (acc * mul + add) >> shift (spec.py). This picks the
shift: int32 arithmetic when it is precise enough (it is about four times cheaper on
AVX2, which has no 64-bit multiply, and the latency model measures kernels with it),
otherwise int64 with up to 31 bits of precision. Precise enough: every channel's
multiplier keeps MIN_MUL_BITS bits, or the fixed-point value is within MAX_CODE_ERROR
codes of the float one for every accumulator the layer can produce. The second covers
a layer with a near-dead channel (tiny BN scale, common in 1-bit layers): its multiplier
has few bits, yet rounding it moves the output by a small absolute amount like every
other channel's; the first rule alone sent such layers to int64, 25-35% slower kernels
than the latency model had measured.
"""
from __future__ import annotations

import math

import numpy as np

from mpqc.errors import ConfigError
from mpqc.schedules.spec import ConvSpec, Epilogue

MIN_MUL_BITS = 10
MAX_CODE_ERROR = 2.0 ** -10   # worst |fixed point - float| before rounding, in codes


def _largest_shift(scale_max: float, offset_max: float, mul_limit: int, add_limit: int,
                   top: int) -> int:
    for shift in range(top, 0, -1):
        if scale_max * 2 ** shift <= mul_limit and offset_max * 2 ** shift <= add_limit:
            return shift
    return 0


def requant_epilogue(spec: ConvSpec, scale, offset, residual_scale=None,
                     out_bits: int | None = None):
    """(Epilogue, mul int32, add int64[, res_mul int32]) for codes output.

    residual_scale[co], if given, multiplies the residual codes before the rounding.
    """
    scale = np.asarray(scale, np.float64)
    offset = np.asarray(offset, np.float64) + 0.5  # round half up = floor(v + 0.5)
    res = None if residual_scale is None else np.asarray(residual_scale, np.float64)
    if not (np.isfinite(scale).all() and np.isfinite(offset).all()):
        raise ConfigError(f"{spec.name}: requantization scale/offset not finite")
    out_bits = out_bits or spec.epilogue.out_bits
    scale_max = max(float(np.abs(scale).max()), float(np.abs(res).max()) if res is not None else 0.0)
    nonzero = np.abs(scale[scale != 0])
    scale_min = float(nonzero.min()) if nonzero.size else scale_max
    offset_max = float(np.abs(offset).max())

    bound = spec.int32_mul_bound
    shift = _largest_shift(scale_max, offset_max, bound, 1 << 30, 30)
    if shift and (scale_min * 2 ** shift >= 2 ** MIN_MUL_BITS
                  or fixed_point_error(spec, shift, res is not None) <= MAX_CODE_ERROR):
        mul_bound = bound
    else:
        shift = _largest_shift(scale_max, offset_max, (1 << 31) - 1, 1 << 62, 40)
        mul_bound = 0
        if not shift:
            raise ConfigError(f"{spec.name}: requantization scale {scale_max:g} too large "
                              "for fixed point")
    epilogue = Epilogue("codes", residual=res is not None, out_bits=out_bits, shift=shift,
                        mul_bound=mul_bound)
    mul = np.round(scale * 2 ** shift).astype(np.int32)
    add = np.round(offset * 2 ** shift).astype(np.int64)
    if res is None:
        return epilogue, mul, add
    return epilogue, mul, add, np.round(res * 2 ** shift).astype(np.int32)


def fixed_point_error(spec: ConvSpec, shift: int, residual: bool) -> float:
    """Largest |(acc*mul + r*res_mul + add) / 2^shift - (acc*scale + r*res_scale + offset)|
    over the layer's accumulators and residual codes: half a unit of each rounded
    constant, times the largest value it multiplies."""
    return (spec.acc_bound + (255 if residual else 0) + 1) * 2.0 ** -(shift + 1)


def effective_bits(mul: np.ndarray) -> int:
    """Bits of precision of the smallest non-zero multiplier (for reports)."""
    nonzero = np.abs(mul[mul != 0])
    return int(math.floor(math.log2(nonzero.min()))) + 1 if nonzero.size else 0
