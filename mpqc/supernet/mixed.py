"""EBS mixed layers (Li et al. 2020, "Efficient Bitwidth Search").

W~ = sum_b softmax(alpha)_b Q_b(W) and X~ = sum_b softmax(beta)_b Q_b(X), then one
conv/linear of X~ and W~. Q_b are the fake-quant operators of mpqc.quant (same codes as
the kernels), each with its own learnable step. Optional scale-clip (BP-NAS distribution
reshaping): W is clipped to +-k * mean|W| before quantizing, so low-bit grids fit it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpqc.quant.codes import act_range
from mpqc.quant.layers import copy_float_params, init_act_step, init_weight_step
from mpqc.schedules.spec import weight_code_range


class MixedQuant(torch.autograd.Function):
    """sum_b p_b Q_b(t), saving only t, the steps and p for the backward pass.

    Composed from autograd ops, every candidate would keep its own tensor-sized
    intermediates, and a step's memory would grow with the number of candidates; here the
    backward recomputes them one candidate at a time, in place in two scratch tensors
    (fresh tensor-sized allocations cost more than the arithmetic on CPU). `grids` holds
    one (lo, hi, bipolar) per candidate: codes clamp(round(t / s), lo, hi), or sign(t)
    for the 1-bit bipolar weight code. Gradients are those of mpqc.quant.layers'
    fake_quant_act and fake_quant_weight (LSQ: straight-through inside the clamp range,
    step gradients scaled by `grad_scales`), tested against them.
    """

    @staticmethod
    def _codes_into(out, t, step: float, grid):
        """Codes of t for one candidate, written into `out`; returns it."""
        lo, hi, bipolar = grid
        if bipolar:   # +1 where t >= 0, else -1 (comparison written as 0/1 floats)
            return torch.ge(t, 0, out=out).mul_(2).sub_(1)
        return torch.div(t, step, out=out).round_().clamp_(lo, hi)

    @staticmethod
    def forward(ctx, t, steps, probs, grids, grad_scales):
        ctx.save_for_backward(t, steps, probs)
        ctx.grids, ctx.grad_scales = grids, grad_scales
        out, codes = torch.zeros_like(t), torch.empty_like(t)
        for i, grid in enumerate(grids):
            s = float(steps[i])
            out.add_(MixedQuant._codes_into(codes, t, s, grid), alpha=float(probs[i]) * s)
        return out

    @staticmethod
    def backward(ctx, grad):
        t, steps, probs = ctx.saved_tensors
        through = torch.zeros_like(t)            # sum_b p_b [candidate b passes gradient]
        v, codes, inside = torch.empty_like(t), torch.empty_like(t), torch.empty_like(t)
        flat = grad.reshape(-1)
        gs, gp = torch.zeros_like(steps), torch.zeros_like(probs)
        for i, grid in enumerate(ctx.grids):
            lo, hi, _ = grid
            s, p = float(steps[i]), float(probs[i])
            torch.div(t, s, out=v)
            torch.eq(torch.clamp(v, lo, hi, out=codes), v, out=inside)   # 1.0 inside lo..hi
            dot = torch.dot(flat, MixedQuant._codes_into(codes, t, s, grid).reshape(-1))
            through.add_(inside, alpha=p)
            ste = torch.dot(flat, v.mul_(inside).reshape(-1))   # sum(grad * v) inside
            gp[i] = dot * s
            # LSQ: d/ds of s*clamp(round(t/s)) is codes - v inside the range, codes outside
            gs[i] = p * (dot - ste) * ctx.grad_scales[i]
        return through.mul_(grad), gs, gp, None, None


class _Mixed:
    w_candidates: tuple[int, ...]
    a_candidates: tuple[int, ...]

    def _setup(self, w_bits, a_bits, clip_k: float | None) -> None:
        for b in (*w_bits, *a_bits):
            act_range(b)  # validates 1..8
        self.w_candidates, self.a_candidates = tuple(w_bits), tuple(a_bits)
        self.clip_k = clip_k
        self.alpha = nn.Parameter(torch.zeros(len(w_bits)))
        self.beta = nn.Parameter(torch.zeros(len(a_bits)))
        w = self._reshaped(self.weight.detach())
        self.w_steps = nn.Parameter(torch.tensor([init_weight_step(w, b) for b in w_bits]))
        self.a_steps = nn.Parameter(torch.tensor([init_act_step(None, b, False) for b in a_bits]))

    def calibrate(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.a_steps.copy_(torch.tensor([init_act_step(x, b, False) for b in self.a_candidates]))

    def _reshaped(self, w: torch.Tensor) -> torch.Tensor:
        if not self.clip_k:
            return w
        bound = self.clip_k * w.detach().abs().mean()
        return torch.clamp(w, -bound, bound)

    def probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q over a_candidates, p over w_candidates)."""
        return F.softmax(self.beta, 0), F.softmax(self.alpha, 0)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        per_sample = max(x[0].numel(), 1)
        grids = tuple((0, (1 << b) - 1, False) for b in self.a_candidates)
        scales = tuple(1.0 / math.sqrt(per_sample * hi) for _, hi, _ in grids)
        return MixedQuant.apply(x, self.a_steps, F.softmax(self.beta, 0), grids, scales)

    def quantized_weight(self) -> torch.Tensor:
        w = self._reshaped(self.weight)
        grids = tuple((-1, 1, True) if b == 1 else (*weight_code_range(b), False)
                      for b in self.w_candidates)
        scales = tuple(1.0 / math.sqrt(w.numel() * (1 if bipolar else hi))
                       for _, hi, bipolar in grids)
        return MixedQuant.apply(w, self.w_steps, F.softmax(self.alpha, 0), grids, scales)

    def chosen(self) -> tuple[int, int]:
        """(a, w) of the largest strengths."""
        return (self.a_candidates[int(self.beta.argmax())],
                self.w_candidates[int(self.alpha.argmax())])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", a in {self.a_candidates}, w in {self.w_candidates}"


class MixedConv2d(_Mixed, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, m: nn.Conv2d, w_bits, a_bits, clip_k=None):
        layer = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                    m.dilation, m.groups, m.bias is not None, m.padding_mode)
        copy_float_params(layer, m)
        layer._setup(w_bits, a_bits, clip_k)
        return layer


class MixedLinear(_Mixed, nn.Linear):
    def forward(self, x):
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, m: nn.Linear, w_bits, a_bits, clip_k=None):
        layer = cls(m.in_features, m.out_features, m.bias is not None)
        copy_float_params(layer, m)
        layer._setup(w_bits, a_bits, clip_k)
        return layer


def is_mixed(module: nn.Module) -> bool:
    return isinstance(module, (MixedConv2d, MixedLinear))
