"""Integer codes: what a quantized weight or activation IS, for the whole project.

- weights: signed codes in `weight_code_range(bits)` (mpqc.schedules.spec): for bits >= 2
  clamp(round(w / step), -2^(b-1), 2^(b-1) - 1); for bits == 1 the bipolar sign, +1 where
  w >= 0 and -1 elsewhere (the kernels store it as a bit, w_signed = 2u - 1);
- activations: unsigned codes clamp(round(x / step), 0, 2^b - 1) (inputs of layers that
  follow a ReLU); signed codes clamp(round(x / step), -2^(b-1), 2^(b-1) - 1) only for the
  first layer, whose input is a normalised image;
- the dequantised value is codes * step.

torch.round rounds half to even (numpy does too); any backend computing codes from
floats must do the same (LLVM's `round` rounds half away from zero).
"""
from __future__ import annotations

import torch

from mpqc.errors import ConfigError
from mpqc.schedules.spec import BIT_RANGE, weight_code_range


def _check(bits: int, what: str) -> None:
    if bits not in BIT_RANGE:
        raise ConfigError(f"{what} bit-width {bits!r} is outside 1..8")


def act_range(bits: int, signed: bool = False) -> tuple[int, int]:
    _check(bits, "activation")
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def weight_codes(w: torch.Tensor, step, bits: int) -> torch.Tensor:
    """Signed integer weight codes (a float tensor holding integers)."""
    _check(bits, "weight")
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    lo, hi = weight_code_range(bits)
    return torch.clamp(torch.round(w / step), lo, hi)


def act_codes(x: torch.Tensor, step, bits: int, signed: bool = False) -> torch.Tensor:
    """Activation codes (a float tensor holding integers)."""
    lo, hi = act_range(bits, signed)
    return torch.clamp(torch.round(x / step), lo, hi)
