"""Global average pooling with the next layer's quantizer, as one scheduled prim func.

The integer contract is lower/program.py's pool_requant: per pixel
t = relu?(x * mul + r * res_mul + add) in int64, then
q = clamp((sum_hw t + 2^(shift-1)) >> shift, 0, 2^bits - 1).

Left to the default Relax pipeline the sum over (H, W) of an NHWC tensor runs with the
channel loop outside the reduction: strided loads, nothing vectorized (5 of the ~85 us
of a 1-bit ResNet-20). Here the pixels are the outer loops and the channels the vector
lanes of a register accumulator.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, tirx

TERM, TOTAL, OUT = "pool_term", "pool_total", "pool_codes"


@dataclass(frozen=True)
class PoolRequant:
    n: int
    h: int
    w: int
    c: int
    in_dtype: str       # the accumulator (int32) or codes (uint8) pooled
    residual: bool      # a residual code tensor (uint8, same shape) with its multiplier
    relu: bool
    shift: int
    out_bits: int


def pool_requant_compute(pool: PoolRequant):
    """Returns (inputs, output): x (N, H, W, C), mul int64 (C,), add int64 (C,)
    [, residual uint8 (N, H, W, C), res_mul int64 (C,)] -> uint8 codes (N, C)."""
    shape = (pool.n, pool.h, pool.w, pool.c)
    x = te.placeholder(shape, pool.in_dtype, name="x")
    mul = te.placeholder((pool.c,), "int64", name="mul")
    add = te.placeholder((pool.c,), "int64", name="add")
    inputs = [x, mul, add]
    if pool.residual:
        res = te.placeholder(shape, "uint8", name="residual")
        res_mul = te.placeholder((pool.c,), "int64", name="res_mul")
        inputs += [res, res_mul]

    def term(n, y, xx, c):
        t = x[n, y, xx, c].astype("int64") * mul[c] + add[c]
        if pool.residual:
            t = t + res[n, y, xx, c].astype("int64") * res_mul[c]
        return tirx.max(t, tirx.const(0, "int64")) if pool.relu else t

    terms = te.compute(shape, term, name=TERM)
    ry, rx = te.reduce_axis((0, pool.h), "ry"), te.reduce_axis((0, pool.w), "rx")
    total = te.compute((pool.n, pool.c), lambda n, c: te.sum(terms[n, ry, rx, c],
                                                             axis=[ry, rx]), name=TOTAL)

    def codes(n, c):
        q = (total[n, c] + tirx.const(1 << (pool.shift - 1), "int64")) >> \
            tirx.const(pool.shift, "int64")
        q = tirx.min(tirx.max(q, tirx.const(0, "int64")),
                     tirx.const((1 << pool.out_bits) - 1, "int64"))
        return q.astype("uint8")

    return inputs, te.compute((pool.n, pool.c), codes, name=OUT)


def pool_requant_prim_func(pool: PoolRequant, name: str = "main") -> tirx.PrimFunc:
    """Pixels outer, channels vectorized, the per-channel totals in a local buffer."""
    if pool.shift < 1:
        raise ValueError(f"pool_requant: shift must be at least 1, got {pool.shift}")
    inputs, out = pool_requant_compute(pool)
    func = te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock(TERM))
    total = sch.get_sblock(TOTAL)
    n, c, ry, rx = sch.get_loops(total)
    sch.reorder(n, ry, rx, c)
    sch.set_scope(total, 0, "local")
    sch.vectorize(c)  # before decompose_reduction: the update block alone is not
    init = sch.decompose_reduction(total, ry)  # a reduction block any more
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock(OUT))[-1])
    return sch.mod["main"].with_attr("global_symbol", name)
