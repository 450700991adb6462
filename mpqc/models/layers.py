"""The layers mpqc can quantize: one LayerInfo per Conv2d / Linear, in execution order.

Shapes come from one forward pass (hooks), not from reading the module tree, so they
are right for any architecture, including layers reused or created out of order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mpqc.errors import ModelError, first_line

FIRST_LAYER_REASON = "first layer stays 8-bit"
LAST_LAYER_REASON = "last layer stays 8-bit"
MAX_KERNEL = 7  # largest square kernel the bit-serial conv schedules are written for


@dataclass(frozen=True)
class LayerInfo:
    """One convolution or linear layer as the search and the compiler see it."""

    name: str                       # qualified module name, e.g. "layer2.0.conv1"
    kind: str                       # "conv2d" | "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool
    in_hw: tuple[int, int]          # (1, 1) for linear layers
    out_hw: tuple[int, int]
    macs: int                       # multiply-accumulates per image
    quantizable: bool
    reason: str                     # why not quantizable; "" when it is


def describe_layers(model: nn.Module, input_shape: tuple[int, int, int],
                    first_last_8bit: bool = True) -> list[LayerInfo]:
    """Run a zero batch of one image through `model` and describe each conv/linear layer."""
    shape = _check_input_shape(model, input_shape)
    seen: list[tuple[str, nn.Module, torch.Size, torch.Size]] = []
    calls: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                seen.append((name, module, args[0].shape, output.shape))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # batch of one; and BN running statistics must not move
        with torch.no_grad():
            model(torch.zeros((1, *shape), **_device_dtype(model)))
    except Exception as exc:
        raise ModelError(f"model {type(model).__name__} fails on an input of shape "
                         f"(1, {', '.join(map(str, shape))}): {type(exc).__name__}: "
                         f"{first_line(exc)}; pass the (C, H, W) the model expects") from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    reused = [name for name, n in calls.items() if n > 1]
    if reused:
        raise ModelError(f"layer {reused[0]!r} runs {calls[reused[0]]} times in one forward "
                         f"pass; mpqc quantizes each layer once: give each use its own module")
    if not seen:
        raise ModelError(f"model {type(model).__name__} has no nn.Conv2d or nn.Linear layer "
                         f"that runs in forward(): nothing to quantize")
    last = len(seen) - 1
    return [_describe(name, m, in_shape, out_shape,
                      first=first_last_8bit and i == 0, last=first_last_8bit and i == last)
            for i, (name, m, in_shape, out_shape) in enumerate(seen)]


def layers_to_json(layers: list[LayerInfo]) -> list[dict]:
    """Plain dicts (tuples as lists) for layers.json."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(layer).items()}
            for layer in layers]


def layers_from_json(rows: list[dict]) -> list[LayerInfo]:
    """Inverse of layers_to_json, so that a resumed pipeline reads layers.json back."""
    try:
        return [LayerInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})
                for row in rows]
    except TypeError as exc:
        raise ModelError(f"layers.json entry does not match LayerInfo ({exc}); "
                         f"regenerate it with the import step") from exc


def _describe(name: str, m: nn.Module, in_shape: torch.Size, out_shape: torch.Size,
              first: bool, last: bool) -> LayerInfo:
    reasons = [FIRST_LAYER_REASON] * first + [LAST_LAYER_REASON] * last
    if isinstance(m, nn.Conv2d):
        padding, symmetric = _conv_padding(m)
        reasons += _conv_unsupported(m, symmetric)
        in_hw, out_hw = tuple(in_shape[-2:]), tuple(out_shape[-2:])
        kh, kw = m.kernel_size
        macs = out_hw[0] * out_hw[1] * m.out_channels * (m.in_channels // m.groups) * kh * kw
        return LayerInfo(name, "conv2d", m.in_channels, m.out_channels, (kh, kw),
                         tuple(m.stride), padding, tuple(m.dilation), m.groups,
                         m.bias is not None, in_hw, out_hw, macs, not reasons,
                         "; ".join(reasons))
    rows = in_shape.numel() // m.in_features  # a Linear on (1, T, F) runs T times
    return LayerInfo(name, "linear", m.in_features, m.out_features, (1, 1), (1, 1), (0, 0),
                     (1, 1), 1, m.bias is not None, (1, 1), (1, 1),
                     rows * m.in_features * m.out_features, not reasons, "; ".join(reasons))


def _conv_unsupported(m: nn.Conv2d, symmetric_padding: bool) -> list[str]:
    """What the bit-serial conv kernels cannot run; each entry is a reason."""
    kh, kw = m.kernel_size
    sh, sw = m.stride
    reasons = []
    if m.groups != 1:
        reasons.append(f"grouped convolution (groups={m.groups}) is not supported "
                       f"by the bit-serial kernels")
    if tuple(m.dilation) != (1, 1):
        reasons.append(f"dilated convolution (dilation={tuple(m.dilation)}) is not supported "
                       f"by the bit-serial kernels")
    if kh != kw or not 1 <= kh <= MAX_KERNEL:
        reasons.append(f"kernel {kh}x{kw} is not supported (square 1x1..{MAX_KERNEL}x"
                       f"{MAX_KERNEL} only)")
    if sh != sw or sh not in (1, 2):
        reasons.append(f"stride ({sh}, {sw}) is not supported (1 or 2, equal on both axes)")
    if m.padding_mode != "zeros":
        reasons.append(f"padding_mode={m.padding_mode!r} is not supported (zeros only)")
    if not symmetric_padding:
        reasons.append("asymmetric 'same' padding (even kernel) is not supported")
    return reasons


def _conv_padding(m: nn.Conv2d) -> tuple[tuple[int, int], bool]:
    """(ph, pw) on the top/left side, and whether bottom/right get the same amount.

    Only padding="same" with an even (dilated) kernel pads unevenly (one more at the end).
    """
    if not isinstance(m.padding, str):
        return tuple(m.padding), True
    if m.padding == "valid":
        return (0, 0), True
    totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
    return (totals[0] // 2, totals[1] // 2), not any(t % 2 for t in totals)


def _check_input_shape(model: nn.Module, input_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"model {type(model).__name__}: input_shape must be (C, H, W) of "
                         f"positive integers, got {input_shape!r}")
    return shape


def _device_dtype(model: nn.Module) -> dict:
    param = next(model.parameters(), None)
    if param is None or not param.is_floating_point():
        return {}
    return {"device": param.device, "dtype": param.dtype}

