"""The quantized model as QDQ ONNX, for onnxruntime users.

Every quantized layer becomes QuantizeLinear/DequantizeLinear of its input (uint8, or
int8 for a signed input quantizer; a Clip before it limits the codes to a bits < 8) and a
Conv/Gemm whose weight is DequantizeLinear of the weight codes stored as an int8
initializer with the per-channel weight step. BatchNorm, ReLU, pooling and residual adds
stay float, as in the fake-quant model, so onnxruntime computes that model (up to float
rounding), not the fixed-point integer program of the compiled library.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpqc.errors import BuildError, first_line
from mpqc.lower.program import as_channel_vector
from mpqc.lower.trace import _codes_of, is_quant_layer


class _QDQLayer(nn.Module):
    """Float stand-in of a quantized layer that exports as QDQ."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.linear = isinstance(layer, nn.Linear)
        self.a_bits, self.signed = int(layer.a_bits), bool(getattr(layer, "a_signed", False))
        self.a_step = float(as_channel_vector(layer.a_step, 1, "a_step")[0])
        codes = torch.from_numpy(_codes_of(layer.weight, layer)).float()
        cout = codes.shape[0]
        step = torch.from_numpy(as_channel_vector(layer.w_step, cout, "w_step")).float()
        self.register_buffer("w_step", step)
        self.register_buffer("weight", codes * step.view(-1, *([1] * (codes.dim() - 1))))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float())
        if not self.linear:
            self.stride, self.padding = layer.stride, layer.padding

    def forward(self, x):
        if self.signed:
            low, high = -(1 << (self.a_bits - 1)), (1 << (self.a_bits - 1)) - 1
        else:
            low, high = 0, (1 << self.a_bits) - 1
        x = torch.clamp(x, low * self.a_step, high * self.a_step)
        x = torch.fake_quantize_per_tensor_affine(x, self.a_step, 0, -128 if self.signed else 0,
                                                  127 if self.signed else 255)
        w = torch.fake_quantize_per_channel_affine(
            self.weight, self.w_step, torch.zeros_like(self.w_step, dtype=torch.int32), 0,
            -128, 127)
        if self.linear:
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def qdq_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose quantized layers are QDQ float modules."""
    import copy
    out = copy.deepcopy(model).eval()
    for name, module in list(out.named_modules()):
        if is_quant_layer(module):
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, _QDQLayer(module))
    return out


def _fold_weight_quantizers(path: Path) -> int:
    """QuantizeLinear of a constant weight -> an int8 initializer of the codes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def array(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    folded, keep = 0, []
    for node in graph.node:
        data = array(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if data is None or data.ndim < 2:
            keep.append(node)
            continue
        scale, zero = array(node.input[1]), array(node.input[2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * data.ndim
        shape[axis] = -1
        codes = np.round(data / scale.reshape(shape)) + zero.astype(np.float32).reshape(shape)
        codes = np.clip(codes, -128, 127).astype(np.int8)
        graph.initializer.append(numpy_helper.from_array(codes, node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:  # the float weights the int8 codes replace
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return folded


def export_qdq_onnx(model: nn.Module, input_shape, out) -> dict:
    """Write the QDQ ONNX model; returns counts for the report."""
    out = Path(out)
    wrapped = qdq_model(model)
    layers = sum(isinstance(m, _QDQLayer) for m in wrapped.modules())
    x = torch.zeros((1, *input_shape))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), str(out), input_names=["x"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              do_constant_folding=True)
    except Exception as exc:
        raise BuildError(f"exporting the quantized model to ONNX failed: "
                         f"{first_line(exc)}") from exc
    folded = _fold_weight_quantizers(out)
    import onnx
    nodes = len(onnx.load(str(out)).graph.node)
    return {"quantized_layers": layers, "weight_initializers_int8": folded, "nodes": nodes}
