"""Quantized PyTorch model -> integer Program (program.py).

The model is traced with torch.fx (quantized layers, BatchNorm, pooling and shortcuts as
leaves) and interpreted node by node. The output of a quantized layer stays symbolic,
an affine function of its integer accumulator (scale, offset, residual, ReLU per
channel), while BatchNorm, ReLU and residual adds fold into it; it becomes integers
only where a consumer needs them:
- the next quantized layer needs codes at its own step and bit-width: the requantization
  is fused into the bit-serial kernel's epilogue (or done by integer glue);
- a residual add or an option-A shortcut needs the residual stream's codes, at the step
  and bits of the quantizer its shortcut module holds (`residual_step`, mpqc.quant.model);
  a quantized layer reading the same tensor requantizes those codes to its own (a glue
  op). Without such a quantizer they are the codes of the layer reading the tensor;
- global average pooling feeding a quantized layer is done in integers (pool_requant);
- the model output is float32 (to_float).
Anything else fails with a BuildError that names the op and the layer.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from mpqc.errors import BuildError, ModelError, first_line
from mpqc.lower import fixed_point
from mpqc.lower.program import LayerBits, Program, Value, as_channel_vector
from mpqc.models.resnet_cifar import PadShortcut
from mpqc.schedules.requant import requant_epilogue
from mpqc.schedules.spec import BIT_RANGE, ConvSpec, Epilogue, pack_word_for

FLOAT_EXACT = 1 << 24  # integers below this add up exactly in float32
QUANT_ATTRS = ("a_bits", "w_bits", "a_step", "w_step")


def is_quant_layer(module: nn.Module) -> bool:
    """A quantized Conv2d/Linear of mpqc.quant (duck-typed on its quantizer attributes)."""
    return isinstance(module, (nn.Conv2d, nn.Linear)) and all(
        hasattr(module, a) for a in QUANT_ATTRS)


@dataclass(frozen=True, eq=False)
class Affine:
    """value = base * scale + offset (+ residual codes * res_scale), then ReLU if relu."""
    base: int
    scale: np.ndarray
    offset: np.ndarray
    bound: int                       # largest |base|
    source: fx.Node                  # the fx node whose users read this tensor
    residual: int | None = None
    res_scale: np.ndarray | None = None
    relu: bool = False
    conv: object = None              # the conv Op producing base, while its epilogue is open


@dataclass(frozen=True, eq=False)
class Pooled:
    affine: Affine
    pixels: int
    source: fx.Node


@dataclass(frozen=True)
class FloatInput:
    value: int


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d,
                          nn.Identity, nn.Flatten, PadShortcut)):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds for data-dependent control flow
        raise ModelError(f"model {type(model).__name__} cannot be traced by torch.fx "
                         f"({type(exc).__name__}: {first_line(exc)}); lowering needs a "
                         "forward() without data-dependent control flow") from exc


def _codes_of(weight: torch.Tensor, module: nn.Module) -> np.ndarray:
    from mpqc.quant.codes import weight_codes
    with torch.no_grad():
        codes = weight_codes(weight.detach().float(), module.w_step, module.w_bits)
    return codes.detach().cpu().numpy().astype(np.int64)


class Lowering:
    """One pass over the fx graph, building a Program."""

    def __init__(self, model: nn.Module, input_shape, batch: int, target):
        self.model = model
        self.modules = dict(model.named_modules())
        self.target = target
        self.batch = batch
        self.prog = Program()
        self.env: dict[fx.Node, object] = {}
        self.cache: dict[tuple, int] = {}
        self.input_shape = tuple(input_shape)

    # ---------------------------------------------------------------- driver
    def run(self, graph: fx.Graph) -> Program:
        quant_nodes = [n for n in graph.nodes if n.op == "call_module"
                       and is_quant_layer(self.modules[n.target])]
        if not quant_nodes:
            raise ModelError(f"model {type(self.model).__name__} has no quantized layer; "
                             "quantize it first (mpqc.quant.model.quantize_model)")
        self.last_layer = quant_nodes[-1].target
        for node in graph.nodes:
            handler = getattr(self, f"_{node.op}")
            self.env[node] = handler(node)
        return self.prog

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"layer {node.target!r}"
        name = getattr(node.target, "__name__", str(node.target))
        return f"op {name!r} (node {node.name})"

    def _unsupported(self, node: fx.Node, why: str) -> BuildError:
        return BuildError(f"cannot lower {self._where(node)}: {why}")

    # ---------------------------------------------------------------- fx node kinds
    def _placeholder(self, node):
        if self.prog.input >= 0:
            raise self._unsupported(node, "the model takes more than one input")
        value = self.prog.new_value("float", (self.batch, *self.input_shape), "float32", "input")
        self.prog.input = value.id
        return FloatInput(value.id)

    def _get_attr(self, node):
        raise self._unsupported(node, "a tensor attribute used as an activation")

    def _output(self, node):
        (result,) = node.args
        if not isinstance(result, fx.Node):
            raise self._unsupported(node, "the model must return a single tensor")
        self.prog.output = self._to_float(self.env[result], node)
        return None

    def _call_module(self, node):
        module = self.modules[node.target]
        if is_quant_layer(module):
            return self._quant_layer(node, module)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            raise ModelError(f"layer {node.target!r} ({type(module).__name__}) is not "
                             "quantized; quantize the model (quantize_model) before lowering")
        if isinstance(module, nn.BatchNorm2d):
            return self._batchnorm(node, module)
        if isinstance(module, nn.ReLU):
            return self._relu(node, self._arg(node))
        if isinstance(module, nn.Identity):
            return self._arg(node)
        if isinstance(module, PadShortcut):
            return self._shortcut(node, module)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return self._pool(node, module.output_size)
        if isinstance(module, nn.Flatten):
            return self._flatten(node, module.start_dim, module.end_dim)
        raise self._unsupported(node, f"module type {type(module).__name__} has no lowering "
                                "(supported: quantized Conv2d/Linear, BatchNorm2d, ReLU, "
                                "AdaptiveAvgPool2d(1), Flatten, Identity, option-A shortcut, add)")

    def _call_function(self, node):
        fn = node.target
        if fn in (F.relu, torch.relu, torch.relu_):
            return self._relu(node, self._arg(node))
        if fn in (operator.add, operator.iadd, torch.add) and len(node.args) == 2:
            return self._add(node)
        if fn is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, start, end)
        if fn is F.adaptive_avg_pool2d:
            return self._pool(node, node.args[1])
        raise self._unsupported(node, "no lowering for this function")

    def _call_method(self, node):
        if node.target in ("relu", "relu_"):
            return self._relu(node, self._arg(node))
        if node.target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return self._flatten(node, start, -1)
        if node.target in ("add", "add_", "__add__"):
            return self._add(node)
        raise self._unsupported(node, f"no lowering for the tensor method {node.target!r}")

    # ---------------------------------------------------------------- ops
    def _arg(self, node, index: int = 0):
        arg = node.args[index]
        if not isinstance(arg, fx.Node):
            raise self._unsupported(node, f"argument {index} is not a tensor")
        return self.env[arg]

    def _quant_layer(self, node, module):
        name = node.target
        a_bits, w_bits = int(module.a_bits), int(module.w_bits)
        for what, bits in (("activation", a_bits), ("weight", w_bits)):
            if bits not in BIT_RANGE:
                raise BuildError(f"layer {name!r}: {what} bit-width {bits} is outside 1..8")
        signed = bool(getattr(module, "a_signed", False))
        a_step = float(as_channel_vector(module.a_step, 1, f"layer {name!r} a_step")[0])
        x = self._arg(node)
        if isinstance(x, FloatInput):
            codes = self._quantize_input(x, a_step, a_bits, signed, name)
        else:
            stream = self._residual_quantizer(x, node)
            if stream is not None:
                x = self._codes_affine(self._materialize(x, *stream, node), x.source)
            codes = self._materialize(x, a_step, a_bits, node, signed=signed)
        value = self.prog.values[codes]
        linear = isinstance(module, nn.Linear)
        if linear and len(value.shape) != 2:
            raise self._unsupported(node, f"a linear layer on a {len(value.shape)}-D tensor "
                                    "(flatten it to (N, features) first)")
        if not linear and len(value.shape) != 4:
            raise self._unsupported(node, "a convolution on a tensor that is not 4-D")
        weights = _codes_of(module.weight, module)
        if linear:
            weights = weights.T.reshape(1, 1, *weights.T.shape)       # (1, 1, K, OUT)
            k, stride, pad = 1, 1, 0
            n, h, w, cin = value.shape[0], 1, 1, value.shape[1]
        else:
            weights = weights.transpose(2, 3, 1, 0)                    # OIHW -> HWIO
            k, stride, pad = _conv_geometry(node, module, self)
            n, h, w, cin = value.shape
        cout = weights.shape[-1]
        if weights.shape[2] != cin:
            raise self._unsupported(node, f"weights expect {weights.shape[2]} input channels, "
                                    f"the input has {cin}")
        relax_impl = signed or (name == self.last_layer and a_bits == 8 and w_bits == 8)
        w_max = 1 if w_bits == 1 else 1 << (w_bits - 1)
        a_max = (1 << (a_bits - 1)) if signed else (1 << a_bits) - 1
        bound = a_max * w_max * k * k * cin
        try:
            spec = ConvSpec(n=n, h=h, w=w, cin=cin, cout=cout, kernel=k, stride=stride,
                            padding=pad, a_bits=a_bits, w_bits=w_bits,
                            word_bits=pack_word_for(cin, self.target.pack_word_bits))
        except Exception as exc:
            raise self._unsupported(node, str(exc)) from exc
        if relax_impl and bound >= FLOAT_EXACT:
            raise self._unsupported(node, f"its 8-bit Relax form sums up to {bound} (>= 2^24, "
                                    "not exact in float32); quantize it to fewer bits")
        out_shape = (n, cout) if linear else (n, spec.out_h, spec.out_w, cout)
        out = self.prog.new_value("acc", out_shape, "int32", name)
        op = self.prog.add("conv", name, [codes], out, impl="relax" if relax_impl else "bitserial",
                           spec=spec, weights=weights.astype(np.int8), linear=linear,
                           closed=relax_impl)
        self.prog.layers.append(LayerBits(name, "linear" if linear else "conv2d", a_bits,
                                          w_bits, op.params["impl"], value.shape, out_shape))
        w_step = as_channel_vector(module.w_step, cout, f"layer {name!r} w_step")
        bias = getattr(module, "bias", None)
        offset = (np.zeros(cout) if bias is None
                  else bias.detach().double().cpu().numpy().reshape(-1))
        return Affine(out.id, a_step * w_step, offset, bound, node,
                      conv=None if relax_impl else op)

    def _quantize_input(self, x: FloatInput, step, bits, signed, name) -> int:
        shape = self.prog.values[x.value].shape
        nhwc = (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape
        out = self.prog.new_value("codes", nhwc, "int8" if signed else "uint8",
                                  f"{name}.input", step=step, bits=bits)
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        self.prog.add("quantize_input", f"{name}.input", [x.value], out, step=step,
                      bits=bits, low=low, high=high)
        return out.id

    def _batchnorm(self, node, bn: nn.BatchNorm2d):
        x = self._arg(node)
        if not isinstance(x, Affine) or x.relu:
            raise self._unsupported(node, "BatchNorm must follow a quantized layer (before "
                                    "any ReLU) to be folded into its epilogue")
        if bn.running_mean is None or bn.running_var is None:
            raise self._unsupported(node, "BatchNorm without running statistics")
        var = bn.running_var.detach().double().cpu().numpy()
        gamma = (bn.weight.detach().double().cpu().numpy() if bn.weight is not None
                 else np.ones_like(var))
        beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else 0 * var
        g = gamma / np.sqrt(var + bn.eps)
        b = beta - bn.running_mean.detach().double().cpu().numpy() * g
        return replace(x, scale=x.scale * g, offset=x.offset * g + b, source=node,
                       res_scale=None if x.res_scale is None else x.res_scale * g)

    def _relu(self, node, x):
        if isinstance(x, Affine):
            return replace(x, relu=True, source=node)
        raise self._unsupported(node, "ReLU of a value that is not a layer output")

    def _add(self, node):
        a, b = self._arg(node, 0), self._arg(node, 1)
        if not (isinstance(a, Affine) and isinstance(b, Affine)):
            raise self._unsupported(node, "add of values that are not layer outputs")
        if self._is_open_main(b) and not self._is_open_main(a):
            a, b = b, a
        if not self._is_open_main(a):
            raise self._unsupported(node, "a residual add needs a quantized layer's output "
                                    "(after BatchNorm, before ReLU) on one side")
        codes = self._residual_codes(b, node)
        step = self.prog.values[codes].step
        if self.prog.values[codes].shape != self.prog.values[a.base].shape:
            raise self._unsupported(node, f"residual shape {self.prog.values[codes].shape} "
                                    f"differs from {self.prog.values[a.base].shape}")
        return replace(a, residual=codes, res_scale=np.full(a.scale.shape, step), source=node)

    def _is_open_main(self, x) -> bool:
        return isinstance(x, Affine) and x.residual is None and not x.relu \
            and self.prog.values[x.base].kind == "acc"

    def _residual_codes(self, x: Affine, node) -> int:
        """The codes a shortcut or residual reads: those of the layer reading the tensor."""
        if self._plain_codes(x):
            return x.base
        step, bits = self._sibling_quantizer(x, node)
        return self._materialize(x, step, bits, node)

    def _residual_quantizer(self, x, node) -> tuple[float, int] | None:
        """(step, bits) of the residual stream's quantizer on a module reading x, if any."""
        if not isinstance(x, Affine):
            return None
        found = {(float(as_channel_vector(m.residual_step, 1, "residual_step")[0]),
                  int(m.residual_bits))
                 for m in (self.modules[u.target] for u in x.source.users
                           if u.op == "call_module") if hasattr(m, "residual_step")}
        if len(found) > 1:
            raise self._unsupported(node, "its input is read by shortcuts with different "
                                    "residual quantizers")
        return found.pop() if found else None

    def _codes_affine(self, codes: int, source: fx.Node) -> Affine:
        value = self.prog.values[codes]
        channels = value.shape[-1]
        return Affine(codes, np.full(channels, value.step), np.zeros(channels),
                      (1 << value.bits) - 1, source)

    def _sibling_quantizer(self, x: Affine, node) -> tuple[float, int]:
        stream = self._residual_quantizer(x, node)
        if stream is not None:
            return stream
        readers = {(float(as_channel_vector(m.a_step, 1, "a_step")[0]), int(m.a_bits))
                   for m in (self.modules[u.target] for u in x.source.users
                             if u.op == "call_module" and is_quant_layer(self.modules[u.target]))}
        if len(readers) != 1:
            raise self._unsupported(node, "its input is read by " + (
                "no quantized layer" if not readers else "quantized layers with different "
                "steps") + "; mpqc passes residuals as the codes of the one layer that "
                "reads the same tensor")
        return readers.pop()

    def _plain_codes(self, x: Affine) -> bool:
        value = self.prog.values[x.base]
        return (value.kind == "codes" and x.residual is None and not np.any(x.offset)
                and np.all(x.scale == value.step))

    def _shortcut(self, node, module: PadShortcut):
        x = self._arg(node)
        if not isinstance(x, Affine):
            raise self._unsupported(node, "shortcut of a value that is not a layer output")
        codes = self.prog.values[self._residual_codes(x, node)]
        n, h, w, c = codes.shape
        s = module.stride
        shape = (n, -(-h // s), -(-w // s), c + module.pad_before + module.pad_after)
        out = self.prog.new_value("codes", shape, codes.dtype, node.target, step=codes.step,
                                  bits=codes.bits)
        self.prog.add("shortcut", node.target, [codes.id], out, stride=s,
                      pad_before=module.pad_before, pad_after=module.pad_after)
        return Affine(out.id, np.full(shape[-1], codes.step), np.zeros(shape[-1]),
                      (1 << codes.bits) - 1, node)

    def _pool(self, node, output_size):
        x = self._arg(node)
        size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,)
        if any(s != 1 for s in size):
            raise self._unsupported(node, f"adaptive pooling to {output_size} (only global "
                                    "average pooling, output size 1, is supported)")
        if not isinstance(x, Affine) or len(self.prog.values[x.base].shape) != 4:
            raise self._unsupported(node, "pooling of a value that is not a conv output")
        _, h, w, _ = self.prog.values[x.base].shape
        return Pooled(x, h * w, node)

    def _flatten(self, node, start, end):
        x = self._arg(node)
        if isinstance(x, Pooled) and start == 1 and end in (-1, 3):
            return x
        if isinstance(x, Affine) and len(self.prog.values[x.base].shape) == 2 and start == 1:
            return x
        raise self._unsupported(node, "flatten is supported after global pooling only")

    # ---------------------------------------------------------------- materialization
    def _materialize(self, x, step: float, bits: int, node, signed: bool = False) -> int:
        if signed:
            raise self._unsupported(node, "a signed activation quantizer on an inner layer "
                                    "(the bit-serial kernels take unsigned codes)")
        key = (id(x), step, bits)
        if key in self.cache:
            return self.cache[key]
        if isinstance(x, Pooled):
            out = self._pool_requant(x, step, bits, node)
        elif isinstance(x, Affine):
            value = self.prog.values[x.base]
            if self._plain_codes(x) and value.step == step and value.bits <= bits:
                return x.base
            if x.conv is not None and not x.conv.params["closed"]:
                out = self._fuse_epilogue(x, step, bits)
            else:
                out = self._requant(x, step, bits, node)
        else:
            raise self._unsupported(node, "its input is not a layer output")
        self.cache[key] = out
        return out

    def _close(self, x: Affine, node):
        """The raw accumulator is needed: keep the conv's int32 output."""
        value = self.prog.values[x.base]
        if value.kind == "codes" and x.conv is not None:
            raise self._unsupported(node, f"the output of layer {value.producer!r} is needed "
                                    "both requantized and raw")
        if x.conv is not None:
            x.conv.params["closed"] = True

    def _fuse_epilogue(self, x: Affine, step: float, bits: int) -> int:
        op = x.conv
        spec = op.params["spec"].with_(epilogue=Epilogue("codes", out_bits=bits))
        res = None if x.residual is None else x.res_scale / step
        consts = requant_epilogue(spec, x.scale / step, x.offset / step, res, out_bits=bits)
        op.params.update(spec=spec.with_(epilogue=consts[0]), mul=consts[1], add=consts[2],
                         closed=True)
        if x.residual is not None:
            op.params["res_mul"] = consts[3]
            op.inputs.append(x.residual)
        value = self.prog.values[op.output]
        value.kind, value.dtype, value.step, value.bits = "codes", "uint8", step, bits
        return value.id

    def _requant(self, x: Affine, step: float, bits: int, node) -> int:
        self._close(x, node)
        base = self.prog.values[x.base]
        res = None if x.residual is None else x.res_scale / step
        what = f"requantization after {base.producer!r}"
        consts = None
        if base.kind == "codes" and base.dtype == "uint8" and res is None:
            consts = fixed_point.recode_constants(x.scale / step, x.offset / step, what)
        if consts is None:
            consts = fixed_point.requant_constants(x.scale / step, x.offset / step, res,
                                                   x.bound, what)
        out = self.prog.new_value("codes", base.shape, "uint8", f"{base.producer}.requant",
                                  step=step, bits=bits)
        inputs = [x.base] + ([x.residual] if x.residual is not None else [])
        self.prog.add("requant", out.producer, inputs, out, out_bits=bits, **consts)
        return out.id

    def _pool_requant(self, x: Pooled, step: float, bits: int, node) -> int:
        aff = x.affine
        self._close(aff, node)
        base = self.prog.values[aff.base]
        consts = fixed_point.pool_constants(aff.scale, aff.offset, aff.res_scale, aff.bound,
                                            x.pixels, step, f"pooling after {base.producer!r}")
        out = self.prog.new_value("codes", (base.shape[0], base.shape[-1]), "uint8",
                                  f"{base.producer}.pool", step=step, bits=bits)
        inputs = [aff.base] + ([aff.residual] if aff.residual is not None else [])
        self.prog.add("pool_requant", out.producer, inputs, out, out_bits=bits, relu=aff.relu,
                      **consts)
        return out.id

    def _to_float(self, x, node) -> int:
        if not isinstance(x, Affine):
            raise self._unsupported(node, "the model output must be a layer output")
        self._close(x, node)
        base = self.prog.values[x.base]
        shape = base.shape if len(base.shape) == 2 else (
            base.shape[0], base.shape[3], base.shape[1], base.shape[2])
        out = self.prog.new_value("float", shape, "float32", f"{base.producer}.output")
        inputs = [x.base] + ([x.residual] if x.residual is not None else [])
        f32 = lambda v: None if v is None else np.asarray(v, np.float32)
        self.prog.add("to_float", out.producer, inputs, out, scale=f32(x.scale),
                      offset=f32(x.offset), res_scale=f32(x.res_scale), relu=x.relu)
        return out.id


def _conv_geometry(node, module: nn.Conv2d, lowering: Lowering) -> tuple[int, int, int]:
    kh, kw = module.kernel_size
    sh, sw = module.stride
    pad = module.padding
    if isinstance(pad, str):
        pad = (0, 0) if pad == "valid" else (kh // 2, kw // 2)
        if module.padding == "same" and kh % 2 == 0:
            raise lowering._unsupported(node, "'same' padding with an even kernel")
    problems = []
    if module.groups != 1:
        problems.append(f"groups={module.groups}")
    if tuple(module.dilation) != (1, 1):
        problems.append(f"dilation={tuple(module.dilation)}")
    if kh != kw or sh != sw or pad[0] != pad[1]:
        problems.append(f"non-square kernel/stride/padding ({kh}x{kw}, {sh}x{sw}, {pad})")
    if module.padding_mode != "zeros":
        problems.append(f"padding_mode={module.padding_mode!r}")
    if problems:
        raise lowering._unsupported(node, "the bit-serial kernels do not support "
                                    + ", ".join(problems))
    return kh, sh, pad[0]


def lower_to_program(model: nn.Module, input_shape, target, batch: int = 1) -> Program:
    """Trace `model` (a quantized model in eval mode) and build its integer Program."""
    model = model.eval()
    lowering = Lowering(model, input_shape, batch, target)
    program = lowering.run(trace(model))
    if program.output < 0:
        raise BuildError("the traced model has no output")
    program.sort_ops()
    return program
