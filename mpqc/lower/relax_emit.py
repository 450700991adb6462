"""Program -> Relax IRModule.

Quantized layers are `call_tir` of the project's bit-serial prim funcs (bitpack of the
input codes, then the fused convolution + epilogue) with weights quantized, offset and
bit-packed once, as constants. The glue is Relax ops that the default pipeline fuses:
- the input quantizer and the 8-bit first/last layers compute in float32 on integer
  codes (exact: every partial sum is an integer below 2^24, checked at lowering); in
  `main`, an 8-bit convolution followed only by its requantization is one scheduled
  prim func (schedules/direct.py), which the default pipeline would leave unscheduled;
- requantization and pooling compute in int64 (integer, so exact by construction); the
  pooling with its quantizer is one scheduled prim func (schedules/pool.py), and so is
  the requantization of a shortcut's codes for the layer reading them, in int32
  (schedules/recode.py);
- option-A shortcuts are a strided slice and a channel pad of uint8 codes;
- the logits are float32.
All activations are NHWC. `main` returns the logits; `debug` returns every op's output
(the integer results of every layer), which `mpqc verify` compares.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from mpqc.errors import BuildError
from mpqc.lower.program import Op, Program
from mpqc.schedules.build import (conv_prim_func, pack_input_prim_func, packed_input,
                                   packed_weights)
from mpqc.schedules.direct import DirectConv, direct_conv_prim_func
from mpqc.schedules.pool import PoolRequant, pool_requant_prim_func
from mpqc.schedules.recode import Recode, recode_prim_func

OPAQUE = 8  # op_pattern: passes must not fuse into the bit-serial kernels


def _ty(shape, dtype: str):
    return relax.TensorType([int(d) for d in shape], dtype)


def _const(array, dtype: str):
    return relax.const(np.ascontiguousarray(np.asarray(array).astype(dtype)), dtype)


def _channels(values, channels: int, dtype: str = "int64"):
    """A per-channel integer constant from a scalar or (C,) array."""
    return _const(np.broadcast_to(np.asarray(values, np.int64), (channels,)).copy(), dtype)


def _scalar(value, dtype: str):
    return relax.const(np.array(value, dtype=dtype), dtype)


class Emitter:
    def __init__(self, program: Program, knobs_for, float_lanes: int = 8,
                 pack_style: str = "multiply"):
        self.program = program
        self.knobs_for = knobs_for      # spec -> (spec with word, Knobs)
        self.float_lanes = float_lanes  # float32 lanes of the target's vectors
        self.pack_style = pack_style    # the target family's activation packing
        self.bb = relax.BlockBuilder()
        self.funcs: dict[str, relax.GlobalVar] = {}
        self.weights: dict[str, relax.Constant] = {}
        self.variants = {op.name: knobs_for(op.params["spec"]) for op in program.ops
                         if op.kind == "conv" and op.params["impl"] == "bitserial"}

    def module(self) -> tvm.IRModule:
        self._function("main", [self.program.output])
        self._function("debug", self.program.debug_values())
        return self.bb.get()

    def _function(self, name: str, outputs: list[int]) -> None:
        p = self.program
        x = relax.Var("images", _ty(p.values[p.input].shape, "float32"))
        bb = self.bb
        # `debug` returns every op's output, so only `main` fuses ops
        fused = self._direct_pairs() if name == "main" else {}
        quantizers = self._fused_quantizers(fused) if name == "main" else {}
        skipped = {requant.output for requant in fused.values()}
        skipped |= {quantize.output for quantize in quantizers.values()}
        with bb.function(name, [x]):
            with bb.dataflow():
                env = {p.input: x}
                for op in p.ops:
                    if op.output in skipped:
                        continue
                    if op.name in fused:
                        requant = fused[op.name]
                        call = self._direct_conv(op, requant, env, quantizers.get(op.name))
                        env[requant.output] = bb.emit(call, requant.name.replace(".", "_"))
                        continue
                    env[op.output] = bb.emit(getattr(self, f"_{op.kind}")(op, env),
                                             op.name.replace(".", "_"))
                result = env[outputs[0]] if len(outputs) == 1 and name == "main" else \
                    relax.Tuple([env[i] for i in outputs])
                out = bb.emit_output(result)
            bb.emit_func_output(out)

    # ---------------------------------------------------------------- helpers
    def _prim(self, key: str, make) -> relax.GlobalVar:
        if key not in self.funcs:
            func = make().with_attr("op_pattern", OPAQUE)
            self.funcs[key] = self.bb.add_func(func, key)
        return self.funcs[key]

    def _emit(self, expr):
        return self.bb.emit(expr)

    def _consumers(self) -> dict[int, list[Op]]:
        """value id -> the ops that read it."""
        consumers: dict[int, list[Op]] = {}
        for op in self.program.ops:
            for i in op.inputs:
                consumers.setdefault(i, []).append(op)
        return consumers

    def _direct_pairs(self) -> dict[str, Op]:
        """8-bit convolutions whose only consumer is a plain requantization."""
        p = self.program
        consumers = self._consumers()
        pairs = {}
        for op in p.ops:
            users = consumers.get(op.output, [])
            if (op.kind == "conv" and op.params["impl"] == "relax" and not op.params["linear"]
                    and op.output != p.output and len(users) == 1
                    and users[0].kind == "requant" and users[0].inputs == [op.output]
                    and p.values[op.inputs[0]].dtype in ("int8", "uint8")):
                pairs[op.name] = users[0]
        return pairs

    def _fused_quantizers(self, fused: dict[str, Op]) -> dict[str, Op]:
        """The input quantizers whose only consumer is a fused 8-bit conv: quantized
        inside its padding (no separate NCHW -> NHWC pass over the image)."""
        consumers = self._consumers()
        producers = {op.output: op for op in self.program.ops}
        found = {}
        for name in fused:
            conv = next(op for op in self.program.ops if op.name == name)
            source = producers.get(conv.inputs[0])
            if (source is not None and source.kind == "quantize_input"
                    and len(consumers[source.output]) == 1):
                found[name] = source
        return found

    # ---------------------------------------------------------------- ops
    def _direct_conv(self, conv_op: Op, requant: Op, env, quantize: Op | None = None):
        spec, q = conv_op.params["spec"], requant.params
        fused_input = None if quantize is None else (
            float(np.float32(quantize.params["step"])), float(quantize.params["low"]),
            float(quantize.params["high"]))
        mul = np.asarray(q["mul"], np.int64)
        mul_dtype = "int32" if np.abs(mul).max() < 2 ** 31 else "int64"
        direct = DirectConv(spec.n, spec.h, spec.w, spec.cin, spec.cout, spec.kernel,
                            spec.stride, spec.padding,
                            self.program.values[conv_op.inputs[0]].dtype, int(q["shift"]),
                            int(q["out_bits"]), fused_input, mul_dtype)
        safe = conv_op.name.replace(".", "_")
        func = self._prim(f"direct_{safe}",
                          lambda: direct_conv_prim_func(direct, self.float_lanes, f"direct_{safe}"))
        source = conv_op.inputs[0] if quantize is None else quantize.inputs[0]
        args = [env[source], _const(conv_op.params["weights"], "float32"),
                _const(mul, mul_dtype), _const(q["add"], "int64")]
        return relax.call_tir(func, args, _ty((spec.n, direct.out_h, direct.out_w, spec.cout),
                                              "uint8"))

    def _quantize_input(self, op: Op, env):
        p = op.params
        x = self._emit(relax.op.permute_dims(env[op.inputs[0]], [0, 2, 3, 1]))
        q = self._emit(relax.op.round(relax.op.divide(x, _scalar(p["step"], "float32"))))
        q = self._emit(relax.op.maximum(q, _scalar(p["low"], "float32")))
        q = self._emit(relax.op.minimum(q, _scalar(p["high"], "float32")))
        return relax.op.astype(q, self.program.values[op.output].dtype)

    def _conv(self, op: Op, env):
        if op.params["impl"] == "relax":
            return self._conv_relax(op, env)
        return self._conv_bitserial(op, env)

    def _conv_relax(self, op: Op, env):
        """8-bit layer in float32 on integer codes: exact below 2^24 (checked in trace)."""
        p, spec = op.params, op.params["spec"]
        x = self._emit(relax.op.astype(env[op.inputs[0]], "float32"))
        if p["linear"]:
            acc = relax.op.matmul(x, _const(p["weights"][0, 0], "float32"))
        else:
            acc = relax.op.nn.conv2d(x, _const(p["weights"], "float32"), strides=spec.stride,
                                     padding=spec.padding, data_layout="NHWC",
                                     kernel_layout="HWIO", out_dtype="float32")
        return relax.op.astype(self._emit(acc), "int32")

    def _conv_bitserial(self, op: Op, env):
        p = op.params
        spec, knobs = self.variants[op.name]
        spec = spec.with_(epilogue=p["spec"].epilogue)
        codes = env[op.inputs[0]]
        if p["linear"]:
            codes = self._emit(relax.op.reshape(codes, (spec.n, 1, 1, spec.cin)))
        safe = op.name.replace(".", "_")
        pack = self._prim(f"bitpack_{safe}", lambda: pack_input_prim_func(
            spec, knobs, f"bitpack_{safe}", self.pack_style))
        conv = self._prim(f"conv_{safe}", lambda: conv_prim_func(spec, knobs, f"conv_{safe}"))
        shape, dtype = packed_input(spec, knobs)
        planes = self._emit(relax.call_tir(pack, [codes], _ty(shape, dtype)))
        if op.name not in self.weights:
            weights = packed_weights(p["weights"], spec, knobs)
            self.weights[op.name] = _const(weights, str(weights.dtype))
        args = [planes, self.weights[op.name]]
        ep = spec.epilogue
        if ep.output == "codes":
            args += [_const(p["mul"], "int32"), _const(p["add"], "int64")]
            if ep.residual:
                args += [env[op.inputs[1]], _const(p["res_mul"], "int32")]
        shape = (spec.n, spec.out_h, spec.out_w, spec.cout)
        out = relax.call_tir(conv, args, _ty(shape, ep.out_dtype))
        if p["linear"]:
            out = relax.op.reshape(self._emit(out), (spec.n, spec.cout))
        return out

    def _affine_int64(self, op: Op, env):
        p = op.params
        t = relax.op.multiply(relax.op.astype(env[op.inputs[0]], "int64"),
                              _const(p["mul"], "int64"))
        if len(op.inputs) > 1:
            r = relax.op.multiply(relax.op.astype(env[op.inputs[1]], "int64"),
                                  _const(p["res_mul"], "int64"))
            t = relax.op.add(t, r)
        return relax.op.add(t, _const(p["add"], "int64"))

    def _clamp_codes(self, q, bits: int):
        q = relax.op.maximum(q, _scalar(0, "int64"))
        q = relax.op.minimum(q, _scalar((1 << bits) - 1, "int64"))
        return relax.op.astype(q, "uint8")

    def _requant(self, op: Op, env):
        if op.params.get("int32"):
            return self._recode(op, env)
        t = self._affine_int64(op, env)
        q = relax.op.right_shift(t, _scalar(op.params["shift"], "int64"))
        return self._clamp_codes(q, op.params["out_bits"])

    def _recode(self, op: Op, env):
        p = op.params
        shape = self.program.values[op.inputs[0]].shape
        recode = Recode(tuple(shape), int(p["shift"]), int(p["out_bits"]))
        safe = op.name.replace(".", "_")
        func = self._prim(f"recode_{safe}", lambda: recode_prim_func(
            recode, max(self.float_lanes, 4), f"recode_{safe}"))
        c = shape[-1]
        return relax.call_tir(func, [env[op.inputs[0]], _channels(p["mul"], c, "int32"),
                                     _channels(p["add"], c, "int32")], _ty(shape, "uint8"))

    def _pool_requant(self, op: Op, env):
        """One scheduled prim func (schedules/pool.py): the default pipeline leaves an NHWC
        sum over pixels unvectorized."""
        p = op.params
        x = self.program.values[op.inputs[0]]
        n, h, w, c = x.shape
        if len(op.inputs) > 1 and self.program.values[op.inputs[1]].dtype != "uint8":
            raise BuildError(f"{op.name}: the pooled residual must be uint8 codes, got "
                             f"{self.program.values[op.inputs[1]].dtype}")
        pool = PoolRequant(n, h, w, c, x.dtype, len(op.inputs) > 1, bool(p["relu"]),
                           int(p["shift"]), int(p["out_bits"]))
        safe = op.name.replace(".", "_")
        func = self._prim(f"pool_{safe}", lambda: pool_requant_prim_func(pool, f"pool_{safe}"))
        args = [env[op.inputs[0]], _channels(p["mul"], c), _channels(p["add"], c)]
        if pool.residual:
            args += [env[op.inputs[1]], _channels(p["res_mul"], c)]
        return relax.call_tir(func, args, _ty((n, c), "uint8"))

    def _shortcut(self, op: Op, env):
        p = op.params
        x = env[op.inputs[0]]
        n, h, w, c = self.program.values[op.inputs[0]].shape
        if p["stride"] != 1:
            x = self._emit(relax.op.strided_slice(x, axes=[1, 2], begin=[0, 0], end=[h, w],
                                                  strides=[p["stride"], p["stride"]]))
        if p["pad_before"] or p["pad_after"]:
            x = relax.op.nn.pad(x, [0, 0, 0, 0, 0, 0, p["pad_before"], p["pad_after"]])
        return x

    def _to_float(self, op: Op, env):
        p = op.params
        v = relax.op.add(relax.op.multiply(relax.op.astype(env[op.inputs[0]], "float32"),
                                           _const(p["scale"], "float32")),
                         _const(p["offset"], "float32"))
        if len(op.inputs) > 1:
            v = relax.op.add(v, relax.op.multiply(
                relax.op.astype(env[op.inputs[1]], "float32"), _const(p["res_scale"], "float32")))
        if p["relu"]:
            v = relax.op.maximum(v, _scalar(0, "float32"))
        if len(self.program.values[op.inputs[0]].shape) == 4:
            v = relax.op.permute_dims(self._emit(v), [0, 3, 1, 2])
        return v


def emit_module(program: Program, knobs_for, float_lanes: int = 8,
                pack_style: str = "multiply") -> tvm.IRModule:
    """The Relax module of a Program: `main` (logits) and `debug` (every op's output)."""
    try:
        return Emitter(program, knobs_for, float_lanes, pack_style).module()
    except BuildError:
        raise
    except Exception as exc:  # TVM's own errors: name where the emission stopped
        from mpqc.errors import last_line
        raise BuildError(f"emitting the Relax module failed: {last_line(exc)}") from exc


def kernel_signatures(module: tvm.IRModule, func: str = "main") -> dict[str, list]:
    """{prim func: [[shape, dtype] of each argument, the output last]} of every kernel
    that `func` calls (call_tir): what a profiler needs to run each kernel alone."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    found: dict[str, list] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            types = [arg.ty for arg in expr.args[1].fields] + list(expr.ty_args)
            found[expr.args[0].name_hint] = [[[int(d) for d in t.shape], str(t.dtype)]
                                             for t in types]

    relax.analysis.post_order_visit(module[func].body, visit)
    return found

