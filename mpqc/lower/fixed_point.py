"""Fixed-point constants of the integer glue (requantization and pooling in Relax, int64).

The bit-serial kernels take theirs from mpqc.schedules.requant (int32 when it fits);
glue ops always compute in int64, so only overflow of int64 bounds the shift.
"""
from __future__ import annotations

import numpy as np

from mpqc.errors import BuildError

MAX_SHIFT = 40
INT64_HEADROOM = 1 << 62
INT32_HEADROOM = 1 << 30


def _pick_shift(worst, what: str, headroom: int = INT64_HEADROOM) -> int:
    """Largest shift <= MAX_SHIFT for which worst(2^shift) stays below `headroom`."""
    for shift in range(MAX_SHIFT, 0, -1):
        if worst(float(2 ** shift)) < headroom:
            return shift
    bits = "32" if headroom <= INT32_HEADROOM else "64"
    raise BuildError(f"{what}: requantization scale too large for {bits}-bit fixed point")


def _fixed(values, shift: int) -> np.ndarray:
    return np.round(np.asarray(values, np.float64) * 2.0 ** shift).astype(np.int64)


def requant_constants(scale, offset, res_scale, bound: int, what: str,
                      headroom: int = INT64_HEADROOM) -> dict:
    """q = clamp((x * mul + r * res_mul + add) >> shift) ~ clamp(round(x*scale + r*res_scale + offset)).

    `bound` is the largest |x| (the accumulator bound, or the largest code); residual
    codes are at most 255. The +0.5 of round-half-up is folded into add. Every term stays
    below `headroom` (2^62: int64 arithmetic).
    """
    scale, offset = np.asarray(scale, np.float64), np.asarray(offset, np.float64) + 0.5
    res = np.zeros_like(scale) if res_scale is None else np.asarray(res_scale, np.float64)
    peak = bound * np.abs(scale).max() + 255 * np.abs(res).max() + np.abs(offset).max()
    shift = _pick_shift(lambda f: peak * f * 1.01 + 2, what, headroom)
    out = {"mul": _fixed(scale, shift), "add": _fixed(offset, shift), "shift": shift}
    if res_scale is not None:
        out["res_mul"] = _fixed(res, shift)
    return out


def recode_constants(scale, offset, what: str) -> dict | None:
    """requant_constants for uint8 codes without a residual, with every term inside int32
    (255 * |mul| + |add| < 2^30, so the kernel's lanes are 32-bit), or None where the
    scale is too large for that."""
    try:
        out = requant_constants(scale, offset, None, 255, what, INT32_HEADROOM)
    except BuildError:
        return None
    if out["shift"] < 8:   # fewer bits than that would round visibly differently from float
        return None
    return {**out, "int32": True}


def pool_constants(scale, offset, res_scale, bound: int, pixels: int, step: float,
                   what: str) -> dict:
    """Constants of pool_requant: the mean over `pixels` and the quantizer of `step`
    folded into per-pixel multipliers (ReLU commutes with a positive scale)."""
    fold = 1.0 / (step * pixels)
    scale = np.asarray(scale, np.float64) * fold
    offset = np.asarray(offset, np.float64) * fold
    res = None if res_scale is None else np.asarray(res_scale, np.float64) * fold
    peak = (bound * np.abs(scale).max() + (255 * np.abs(res).max() if res is not None else 0)
            + np.abs(offset).max())
    shift = _pick_shift(lambda f: pixels * (peak * f * 1.01 + 2) + f, what)
    out = {"mul": _fixed(scale, shift), "add": _fixed(offset, shift), "shift": shift}
    if res is not None:
        out["res_mul"] = _fixed(res, shift)
    return out
