"""Codes -> codes requantization (a shortcut's 8-bit codes into the next layer's bits), as
one scheduled prim func.

The integer contract is lower/program.py's requant of uint8 codes without a residual:
q = clamp((c * mul[ch] + add[ch]) >> shift, 0, 2^bits - 1). The constants are chosen so
that 255 * |mul| + |add| fits int32 (fixed_point.recode_constants), which makes every
lane 32-bit. Left to the default Relax pipeline the same arithmetic ran in int64, one
loop per op: ~25 us per 32x32x16 tensor, as much as a 2-bit convolution; here the
pixels and channels are one vectorized loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, tirx

OUT = "recode_codes"


@dataclass(frozen=True)
class Recode:
    shape: tuple[int, ...]   # NHWC (or N, C) uint8 codes in and out
    shift: int
    out_bits: int


def recode_compute(recode: Recode):
    """(inputs, output): codes uint8 `shape`, mul int32 (C,), add int32 (C,) -> uint8."""
    c = recode.shape[-1]
    codes = te.placeholder(recode.shape, "uint8", name="codes")
    mul = te.placeholder((c,), "int32", name="mul")
    add = te.placeholder((c,), "int32", name="add")

    def out(*index):
        ch = index[-1]
        q = (codes[index].astype("int32") * mul[ch] + add[ch]) >> tirx.const(recode.shift, "int32")
        q = tirx.min(tirx.max(q, tirx.const(0, "int32")),
                     tirx.const((1 << recode.out_bits) - 1, "int32"))
        return q.astype("uint8")

    return [codes, mul, add], te.compute(recode.shape, out, name=OUT)


def recode_prim_func(recode: Recode, lanes: int = 16, name: str = "main") -> tirx.PrimFunc:
    """Every element in one loop, split by the vector's int32 lanes."""
    if recode.shift < 1:
        raise ValueError(f"recode: shift must be at least 1, got {recode.shift}")
    inputs, out = recode_compute(recode)
    func = te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(OUT)
    loops = sch.get_loops(block)
    c = recode.shape[-1]
    # channels innermost and whole (the constants index them); vectorize a multiple of them
    inner = loops[-1]
    if c % lanes and lanes % c == 0 and len(loops) > 1:
        width = recode.shape[-2]
        group = lanes // c
        if width % group == 0:
            _, w_in = sch.split(loops[-2], [None, group])
            inner = sch.fuse(w_in, loops[-1])
    elif c % lanes == 0 and c > lanes:
        _, inner = sch.split(inner, [None, lanes])
    sch.vectorize(inner)
    return sch.mod["main"].with_attr("global_symbol", name)
