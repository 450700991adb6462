"""Fake-quant Conv2d and Linear: quantize the input and the weight, then one float op.

The forward pass computes exactly codes * step (mpqc.quant.codes) for both operands, so
the integer result of the layer is sum(act codes * weight codes) * a_step * w_step; the
backward pass is LSQ's (Esser et al. 2020): straight-through inside the clamp range, and
a gradient for each step, scaled by 1/sqrt(numel * q_max) so that steps learn at the
pace of the weights. BatchNorm stays a separate module: the lowering folds it, with the
steps, into the kernel epilogue per channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpqc.quant.codes import act_range, weight_codes
from mpqc.schedules.spec import weight_code_range


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x - x * scale).detach() + x * scale


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def fake_quant_weight(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """weight_codes(w, step, bits) * step, with LSQ gradients."""
    if bits == 1:
        # straight-through only for |w| < step, as for the other widths: letting every
        # weight through (v = w / s) also makes the step's gradient sign(w) - w/s for
        # the large weights, and ResNet-20's QAT then trained far worse (docs/BENCHMARKS.md)
        s = _grad_scale(step, 1.0 / math.sqrt(w.numel()))
        v = torch.clamp(w / s, -1, 1)
        return ((weight_codes(w, step, 1) - v).detach() + v) * s
    lo, hi = weight_code_range(bits)
    s = _grad_scale(step, 1.0 / math.sqrt(w.numel() * hi))
    return _round_ste(torch.clamp(w / s, lo, hi)) * s


def fake_quant_act(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool = False):
    """act_codes(x, step, bits, signed) * step, with LSQ gradients."""
    lo, hi = act_range(bits, signed)
    s = _grad_scale(step, 1.0 / math.sqrt(max(x[0].numel(), 1) * hi))
    return _round_ste(torch.clamp(x / s, lo, hi)) * s


def init_weight_step(w: torch.Tensor, bits: int) -> float:
    """LSQ's initial step; the mean magnitude for the bipolar 1-bit code."""
    mean = float(w.detach().abs().mean()) or 1e-3
    return mean if bits == 1 else 2 * mean / math.sqrt(weight_code_range(bits)[1])


def init_act_step(x: torch.Tensor | None, bits: int, signed: bool) -> float:
    """A step whose grid covers the 99.9th percentile of |x| (of x >= 0 when unsigned)."""
    hi = act_range(bits, signed)[1]
    if x is None:
        return (3.0 if signed else 4.0) / hi
    values = x.detach().abs().flatten() if signed else x.detach().clamp(min=0).flatten()
    if values.numel() > 1_000_000:
        # a fixed sample: rebuilding a model (verify, resume) must give the same steps
        pick = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))
        values = values[pick[:1_000_000]]
    top = float(torch.quantile(values.float(), 0.999)) if values.numel() else 0.0
    return max(top, 1e-3) / hi


def copy_float_params(dst: nn.Module, src: nn.Module) -> None:
    """The float weight and bias of `src` into a quantized or mixed twin `dst`."""
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)


class _QuantMixin:
    a_bits: int
    w_bits: int
    a_signed: bool

    def _setup(self, a_bits: int, w_bits: int, a_signed: bool) -> None:
        act_range(a_bits, a_signed)          # validates
        weight_codes(torch.zeros(1), 1.0, w_bits)
        self.a_bits, self.w_bits, self.a_signed = int(a_bits), int(w_bits), bool(a_signed)
        self.w_step = nn.Parameter(torch.tensor(init_weight_step(self.weight, w_bits)))
        self.a_step = nn.Parameter(torch.tensor(init_act_step(None, a_bits, a_signed)))

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_act(x, self.a_step, self.a_bits, self.a_signed)

    def quantized_weight(self) -> torch.Tensor:
        return fake_quant_weight(self.weight, self.w_step, self.w_bits)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", a_bits={self.a_bits}, w_bits={self.w_bits}"
                + (", a_signed=True" if self.a_signed else ""))

    @classmethod
    def from_float(cls, module, a_bits: int, w_bits: int, a_signed: bool = False):
        raise NotImplementedError


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, a_bits: int, w_bits: int, a_signed: bool = False):
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                module.padding, module.dilation, module.groups, module.bias is not None,
                module.padding_mode, device=module.weight.device, dtype=module.weight.dtype)
        copy_float_params(q, module)
        q._setup(a_bits, w_bits, a_signed)
        return q


class QuantLinear(_QuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, a_bits: int, w_bits: int, a_signed: bool = False):
        q = cls(module.in_features, module.out_features, module.bias is not None,
                device=module.weight.device, dtype=module.weight.dtype)
        copy_float_params(q, module)
        q._setup(a_bits, w_bits, a_signed)
        return q
