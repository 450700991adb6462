"""EBS mixed layers (Li et al. 2020, "Efficient Bitwidth Search").

W~ = sum_b softmax(alpha)_b Q_b(W) and X~ = sum_b softmax(beta)_b Q_b(X), then one
conv/linear of X~ and W~. Q_b are the fake-quant operators of mpqc.quant (same codes as
the kernels), each with its own learnable step. Optional scale-clip (BP-NAS distribution
reshaping): W is clipped to +-k * mean|W| before quantizing, so low-bit grids fit it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpqc.quant.codes import act_range
from mpqc.quant.layers import (copy_float_params, fake_quant_act, fake_quant_weight,
                               init_act_step, init_weight_step)


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
        q = F.softmax(self.beta, 0)
        return sum(q[i] * fake_quant_act(x, self.a_steps[i], b)
                   for i, b in enumerate(self.a_candidates))

    def quantized_weight(self) -> torch.Tensor:
        p = F.softmax(self.alpha, 0)
        w = self._reshaped(self.weight)
        return sum(p[i] * fake_quant_weight(w, self.w_steps[i], b)
                   for i, b in enumerate(self.w_candidates))

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
