"""The integer program of a quantized network: what both the compiled library and the
integer reference compute, op by op, with every constant fixed.

Lowering (trace.py) turns a quantized PyTorch model into a Program; relax_emit.py
turns the Program into a Relax module, reference.py runs it in integers with numpy and
PyTorch. Both read the same constants, so the integers they produce are equal by
contract, and a mismatch points at one op.

Values are NHWC (N, H, W, C) or (N, C). Kinds:
- "float": float32 (the input image, NCHW; logits);
- "codes": activation codes, uint8 (or int8 for a signed input quantizer), with the
  step that maps them back to real values (value = code * step);
- "acc": the int32 accumulator of a convolution or linear layer (sum of code products,
  weight-offset correction included).

Ops (`Op.kind`):
- quantize_input: float NCHW -> codes NHWC, clamp(round_half_even(x / step));
- conv: codes -> acc or codes. `impl` "bitserial" is the project's bit-serial kernel with
  its fused epilogue (spec.epilogue); "relax" is a Relax conv/matmul of the codes in
  float32, exact because every partial sum is an integer below 2^24 (the 8-bit first
  and last layers);
- requant: acc or codes (+ residual codes) -> codes, the integer requantization of
  schedules/spec.py computed by Relax ops in int64;
- shortcut: codes -> codes, option-A shortcut (spatial stride, zero channels);
- pool_requant: acc or codes (+ residual) -> codes (N, C): global average pooling and
  the next layer's quantizer in integers: t = relu?(x * mul + r * res_mul + add) per
  pixel, q = clamp((sum_hw t + 2^(shift-1)) >> shift, 0, 2^bits - 1);
- to_float: acc -> float32 v = float(acc) * scale + offset (+ residual * res_scale),
  relu? (the logits; equal up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VALUE_KINDS = ("float", "codes", "acc")
OP_KINDS = ("quantize_input", "conv", "requant", "shortcut", "pool_requant", "to_float")


@dataclass
class Value:
    id: int
    kind: str
    shape: tuple[int, ...]
    dtype: str
    producer: str                  # name of the op that makes it (layer name for convs)
    step: float | None = None      # codes: real value = code * step
    bits: int | None = None        # codes: bit-width

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "shape": list(self.shape),
                "dtype": self.dtype, "producer": self.producer, "step": self.step,
                "bits": self.bits}


@dataclass
class Op:
    kind: str
    name: str
    inputs: list[int]
    output: int
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-able description (no arrays)."""
        keep = {k: v for k, v in self.params.items()
                if isinstance(v, (int, float, str, bool, type(None)))}
        if "spec" in self.params:
            keep["spec"] = self.params["spec"].name
        return {"kind": self.kind, "name": self.name, "inputs": self.inputs,
                "output": self.output, **keep}


@dataclass
class LayerBits:
    name: str
    kind: str          # "conv2d" | "linear"
    a_bits: int
    w_bits: int
    impl: str          # "bitserial" | "relax"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass
class Program:
    values: list[Value] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    input: int = -1
    output: int = -1
    layers: list[LayerBits] = field(default_factory=list)

    def new_value(self, kind: str, shape, dtype: str, producer: str, step=None,
                  bits=None) -> Value:
        value = Value(len(self.values), kind, tuple(int(d) for d in shape), dtype, producer,
                      None if step is None else float(step), bits)
        self.values.append(value)
        return value

    def add(self, kind: str, name: str, inputs: list[int], output: Value, **params) -> Op:
        op = Op(kind, name, list(inputs), output.id, params)
        self.ops.append(op)
        return op

    def sort_ops(self) -> None:
        """Order ops so each comes after the producers of its inputs (a residual's
        shortcut may be created after the conv that consumes it); stable otherwise."""
        ready, ordered, pending = {self.input}, [], list(self.ops)
        while pending:
            op = next((o for o in pending if all(i in ready for i in o.inputs)), None)
            if op is None:
                raise ValueError("the program has a cycle")
            pending.remove(op)
            ordered.append(op)
            ready.add(op.output)
        self.ops = ordered

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.values[self.input].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.values[self.output].shape

    def debug_values(self) -> list[int]:
        """The values the debug entry point returns, in op order (every op's output)."""
        return [op.output for op in self.ops]

    def to_json(self) -> dict:
        return {"values": [v.to_json() for v in self.values],
                "ops": [op.summary() for op in self.ops], "input": self.input,
                "output": self.output}


def as_channel_vector(values, channels: int, what: str) -> np.ndarray:
    """A per-output-channel float64 vector from a scalar, (C,) or (C, 1, 1, 1) tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1:
        return np.full(channels, float(array[0]))
    if array.size != channels:
        from mpqc.errors import ModelError
        raise ModelError(f"{what}: {array.size} values for {channels} channels")
    return array
