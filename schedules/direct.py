"""The 8-bit first convolution with its requantization, as one scheduled prim func.

The network's first layer takes the signed 8-bit codes of the image (3 channels): too
few channels for bit planes, so it multiplies codes in float32 (exact: every partial sum
is an integer below 2^24, which the lowering checks) and requantizes the integer
accumulator to the next layer's unsigned codes in int64, the same arithmetic as the
Relax glue (`clamp((acc * mul + add) >> shift, 0, 2^bits - 1)`).

Left to the default Relax pipeline, conv2d + requantization lower to one unscheduled
loop nest (a fifth of a 1-bit ResNet-20's time). Here the output tile is `tile_w` pixels
x `lanes` channels of float32 accumulators in registers, the kernel window unrolled
around it, and the requantization computed on the tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from mpqc.schedules.knobs import largest_divisor_at_most
from mpqc.schedules.spec import conv_out_size

PAD, ACC, OUT = "pad_float", "direct_acc", "requant"


@dataclass(frozen=True)
class DirectConv:
    n: int
    h: int
    w: int
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    in_dtype: str      # the input codes: "int8" (signed image codes) or "uint8"
    shift: int         # requantization: q = clamp((acc * mul + add) >> shift, 0, 2^out_bits - 1)
    out_bits: int
    # the input quantizer fused in: (step, low, high); the input is then the float32
    # image, NCHW, quantized as clamp(round_half_even(x / step), low, high) while padding
    quantize: tuple[float, float, float] | None = None
    # int32 when every multiplier fits: a product of two sign-extended 32-bit values is
    # one vpmuldq, where a full 64-bit multiply is three uops (AVX-512) or emulated (AVX2)
    mul_dtype: str = "int64"

    @property
    def out_h(self) -> int:
        return conv_out_size(self.h, self.kernel, self.stride, self.padding)

    @property
    def out_w(self) -> int:
        return conv_out_size(self.w, self.kernel, self.stride, self.padding)


def direct_conv2d_nhwc(conv: DirectConv):
    """Returns (inputs, output): codes (N, H, W, Cin) or, with `quantize`, the float32
    image (N, Cin, H, W); weights float32 (K, K, Cin, Cout), mul `mul_dtype` (Cout,), add
    int64 (Cout,) -> uint8 codes (N, OH, OW, Cout)."""
    k, s, p = conv.kernel, conv.stride, conv.padding
    if conv.quantize is None:
        codes = te.placeholder((conv.n, conv.h, conv.w, conv.cin), conv.in_dtype,
                               name="codes")
    else:
        codes = te.placeholder((conv.n, conv.cin, conv.h, conv.w), "float32", name="images")
    weight = te.placeholder((k, k, conv.cin, conv.cout), "float32", name="weights")
    mul = te.placeholder((conv.cout,), conv.mul_dtype, name="mul")
    add = te.placeholder((conv.cout,), "int64", name="add")

    def pad(n, y, x, c):
        inside = tirx.all(y >= p, y < conv.h + p, x >= p, x < conv.w + p)
        yy, xx = tirx.max(y - p, 0), tirx.max(x - p, 0)
        if conv.quantize is None:
            value = codes[n, yy, xx, c].astype("float32")
        else:  # the same float32 ops as the Relax quantizer: divide, round, clamp
            step, low, high = (tirx.const(v, "float32") for v in conv.quantize)
            value = tirx.min(tirx.max(tirx.round(codes[n, c, yy, xx] / step), low), high)
        return tirx.if_then_else(inside, value, tirx.const(0.0, "float32"))

    hp, wp = conv.h + 2 * p, conv.w + 2 * p
    if conv.quantize is None:
        padded = te.compute((conv.n, hp, wp, conv.cin), pad, name=PAD)
        window = lambda n, y, x, c: padded[n, y, x, c]  # noqa: E731
    else:  # NCHW like the image: the quantizer vectorizes along its rows
        padded = te.compute((conv.n, conv.cin, hp, wp), lambda n, c, y, x: pad(n, y, x, c),
                            name=PAD)
        window = lambda n, y, x, c: padded[n, c, y, x]  # noqa: E731
    kh, kw = te.reduce_axis((0, k), "kh"), te.reduce_axis((0, k), "kw")
    ci = te.reduce_axis((0, conv.cin), "ci")
    shape = (conv.n, conv.out_h, conv.out_w, conv.cout)
    acc = te.compute(shape, lambda n, y, x, co: te.sum(
        window(n, y * s + kh, x * s + kw, ci) * weight[kh, kw, ci, co], axis=[kh, kw, ci]),
        name=ACC)

    def requant(n, y, x, co):
        t = acc[n, y, x, co].astype("int32").astype("int64") * mul[co].astype("int64") + add[co]
        q = t >> tirx.const(conv.shift, "int64")
        q = tirx.min(tirx.max(q, tirx.const(0, "int64")),
                     tirx.const((1 << conv.out_bits) - 1, "int64"))
        return q.astype("uint8")

    out = te.compute(shape, requant, name=OUT)
    return [codes, weight, mul, add], out


def direct_conv_prim_func(conv: DirectConv, lanes: int, name: str = "main",
                          tile_w: int = 8) -> tirx.PrimFunc:
    """Scheduled: `lanes` float32 output channels per vector (simd_bits / 32)."""
    inputs, out = direct_conv2d_nhwc(conv)
    func = te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    tw = largest_divisor_at_most(conv.out_w, tile_w)
    tc = largest_divisor_at_most(conv.cout, lanes)

    block = sch.get_sblock(OUT)
    n, y, x, co = sch.get_loops(block)
    xo, xi = sch.split(x, [None, tw])
    coo, coi = sch.split(co, [None, tc])
    sch.reorder(n, y, xo, coo, xi, coi)
    row = sch.fuse(n, y)
    sch.parallel(row)
    sch.unroll(xi)
    sch.vectorize(coi)

    acc = sch.get_sblock(ACC)
    sch.compute_at(acc, coo)
    sch.set_scope(acc, 0, "local")
    loops = sch.get_loops(acc)
    # under the tile: (x, co) then the reduction (kh, kw, ci); unit loops are dropped
    extents = {"x": tw, "co": tc, "kh": conv.kernel, "kw": conv.kernel, "ci": conv.cin}
    present = [name for name, e in extents.items() if e > 1]
    found = dict(zip(present, loops[-len(present):]))
    reduction = [found[k] for k in ("kh", "kw", "ci") if k in found]
    tile = [found[k] for k in ("x", "co") if k in found]
    if reduction:
        sch.reorder(*reduction, *tile)
    if "co" in found:
        sch.vectorize(found["co"])
    if "x" in found:
        sch.unroll(found["x"])
    if "ci" in found:
        sch.unroll(found["ci"])
    if reduction or tile:
        sch.decompose_reduction(acc, (reduction or tile)[0])

    pad = sch.get_sblock(PAD)
    if conv.quantize is None:
        pn, py, _, _ = sch.get_loops(pad)
        sch.parallel(sch.fuse(pn, py))
    else:
        pn, pc, py, px = sch.get_loops(pad)
        sch.parallel(sch.fuse(pn, pc, py))
        sch.vectorize(px)
    return sch.mod["main"].with_attr("global_symbol", name)


def direct_conv_reference(codes: np.ndarray, weights: np.ndarray, mul: np.ndarray,
                          add: np.ndarray, conv: DirectConv) -> np.ndarray:
    """numpy: the integer convolution of the codes, then the int64 requantization."""
    k, s, p = conv.kernel, conv.stride, conv.padding
    x = np.pad(codes.astype(np.int64), ((0, 0), (p, p), (p, p), (0, 0)))
    w = weights.astype(np.int64)
    acc = np.zeros((conv.n, conv.out_h, conv.out_w, conv.cout), np.int64)
    for i in range(k):
        for j in range(k):
            window = x[:, i:i + s * conv.out_h:s, j:j + s * conv.out_w:s, :]
            acc += window @ w[i, j]
    q = (acc * mul.astype(np.int64) + add.astype(np.int64)) >> conv.shift
    return np.clip(q, 0, (1 << conv.out_bits) - 1).astype(np.uint8)
