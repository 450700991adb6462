"""The integer reference: a Program run op by op in integers, on the host, without TVM.

Convolutions are computed in float64 with PyTorch on the integer codes (exact: every
partial sum is an integer far below 2^53), the input quantizer is the one of
mpqc.quant.codes, and the epilogues are those of mpqc.schedules.reference, so the result
is the integer fake-quant model: the integers the compiled library must reproduce.
`run_reference` returns every op's output, so a mismatch is found layer by layer.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mpqc.errors import ConfigError
from mpqc.lower.program import Op, Program
from mpqc.schedules import reference as kernels


def _conv_acc(codes: np.ndarray, op: Op) -> np.ndarray:
    spec, weights = op.params["spec"], op.params["weights"].astype(np.float64)
    if op.params["linear"]:
        acc = torch.from_numpy(codes.astype(np.float64)) @ torch.from_numpy(weights[0, 0])
        return acc.numpy().round().astype(np.int64)
    x = torch.from_numpy(codes.astype(np.float64)).permute(0, 3, 1, 2)
    w = torch.from_numpy(weights).permute(3, 2, 0, 1)
    acc = F.conv2d(x, w, stride=spec.stride, padding=spec.padding)
    return acc.permute(0, 2, 3, 1).numpy().round().astype(np.int64)


def _conv(op: Op, args: list[np.ndarray]) -> np.ndarray:
    acc = _conv_acc(args[0], op)
    spec = op.params["spec"]
    if spec.epilogue.output == "int32":
        return acc.astype(np.int32)
    residual = args[1] if len(args) > 1 else None
    if op.params["linear"]:
        acc = acc.reshape(acc.shape[0], 1, 1, -1)
    out = kernels.apply_epilogue(acc, spec.epilogue, op.params["mul"], op.params["add"],
                                 residual, op.params.get("res_mul"))
    return out.reshape(acc.shape[0], -1) if op.params["linear"] else out


def _requant(op: Op, args: list[np.ndarray]) -> np.ndarray:
    p = op.params
    total = args[0].astype(np.int64) * p["mul"]
    if len(args) > 1:
        total = total + args[1].astype(np.int64) * p["res_mul"]
    q = (total + p["add"]) >> p["shift"]
    return np.clip(q, 0, (1 << p["out_bits"]) - 1).astype(np.uint8)


def _pool_requant(op: Op, args: list[np.ndarray]) -> np.ndarray:
    p = op.params
    t = args[0].astype(np.int64) * p["mul"] + p["add"]
    if len(args) > 1:
        t = t + args[1].astype(np.int64) * p["res_mul"]
    if p["relu"]:
        t = np.maximum(t, 0)
    q = (t.sum(axis=(1, 2)) + (1 << (p["shift"] - 1))) >> p["shift"]
    return np.clip(q, 0, (1 << p["out_bits"]) - 1).astype(np.uint8)


def _shortcut(op: Op, args: list[np.ndarray]) -> np.ndarray:
    s, p = op.params["stride"], op.params
    x = args[0][:, ::s, ::s, :]
    return np.pad(x, ((0, 0), (0, 0), (0, 0), (p["pad_before"], p["pad_after"])))


def _to_float(op: Op, args: list[np.ndarray]) -> np.ndarray:
    p = op.params
    v = args[0].astype(np.float32) * p["scale"] + p["offset"]
    if len(args) > 1:
        v = v + args[1].astype(np.float32) * p["res_scale"]
    if p["relu"]:
        v = np.maximum(v, np.float32(0))
    return v.transpose(0, 3, 1, 2) if v.ndim == 4 else v


def quantize_input(x: np.ndarray, op: Op) -> np.ndarray:
    """The input quantizer as mpqc.quant defines it (round half to even), NCHW -> NHWC."""
    from mpqc.quant.codes import act_codes
    p = op.params
    signed = p["low"] < 0
    step = torch.tensor(p["step"], dtype=torch.float32)  # the layer's float32 step
    codes = act_codes(torch.from_numpy(np.ascontiguousarray(x, np.float32)), step,
                      p["bits"], signed=signed)
    codes = codes.detach().numpy().round().astype(np.int64)
    return codes.transpose(0, 2, 3, 1).astype(np.int8 if signed else np.uint8)


_RUN = {"conv": _conv, "requant": _requant, "pool_requant": _pool_requant,
        "shortcut": _shortcut, "to_float": _to_float}


def run_reference(program: Program, images: np.ndarray) -> dict[int, np.ndarray]:
    """Every op's output for a batch of float NCHW images: {value id: array}."""
    images = np.asarray(images, dtype=np.float32)
    expected = program.values[program.input].shape[1:]
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ConfigError(f"images of shape {images.shape}; the network takes "
                          f"(N, {', '.join(map(str, expected))})")
    values: dict[int, np.ndarray] = {program.input: images}
    for op in program.ops:
        args = [values[i] for i in op.inputs]
        if op.kind == "quantize_input":
            values[op.output] = quantize_input(args[0], op)
        else:
            values[op.output] = _RUN[op.kind](op, args)
    return values


def reference_logits(program: Program, images: np.ndarray) -> np.ndarray:
    return run_reference(program, images)[program.output]
