"""TE computes of the bit-serial operators (what is computed, not how: see tiling.py).

Block names are part of the interface: schedules find the stages by them.
"""
from __future__ import annotations

from tvm import te, tirx

from mpqc.schedules.spec import ConvSpec, weight_offset

ACC_DTYPE = "int64"
PACK, ACC, WINDOW_SUM, OUT = "bitpack", "popcount_acc", "window_sum", "epilogue"


def bitpack_nhwc(codes: te.Tensor, spec: ConvSpec) -> te.Tensor:
    """uint8 NHWC a-bit codes -> zero-padded bit planes (N, H+2P, W+2P, A, words).

    Padding pixels and padding channels get code 0, which the weight-offset correction
    accounts for (a zero code adds nothing to the window sum either).
    """
    word, p = spec.word_bits, spec.padding
    dtype = f"uint{word}"
    hp, wp = spec.padded_hw
    # a single word holds only `cin` channels: do not loop over the empty bits
    k = te.reduce_axis((0, min(word, spec.cin) if spec.words == 1 else word), "k")

    def plane(n, h, w, i, cw):
        c = cw * word + k
        inside = tirx.all(h >= p, h < spec.h + p, w >= p, w < spec.w + p, c < spec.cin)
        code = codes[n, h - p, w - p, tirx.min(c, spec.cin - 1)].astype(dtype)
        bit = (code >> i.astype(dtype)) & tirx.const(1, dtype)
        return te.sum(tirx.if_then_else(inside, bit << k.astype(dtype), tirx.const(0, dtype)),
                      axis=k)

    return te.compute((spec.n, hp, wp, spec.a_bits, spec.words), plane, name=PACK)


def bitserial_conv2d_nhwc(spec: ConvSpec, packed_data: te.Tensor | None = None):
    """The fused operator on packed planes. Returns (inputs, output) for create_prim_func.

    inputs: packed data (N, HP, WP, A, words), packed weights (KH, KW, W, words, Cout)
    and, by epilogue kind: codes: mul int32 (Cout,), add int64 (Cout,), [residual uint8
    (N, OH, OW, Cout), res_mul int32 (Cout,)]; float32: mul, add float32 (Cout,),
    [residual float32 (N, OH, OW, Cout)].
    """
    dtype = f"uint{spec.word_bits}"
    hp, wp = spec.padded_hw
    k, s = spec.kernel, spec.stride
    data = packed_data if packed_data is not None else te.placeholder(
        (spec.n, hp, wp, spec.a_bits, spec.words), dtype, name="data_planes")
    weight = te.placeholder((k, k, spec.w_bits, spec.words, spec.cout), dtype,
                            name="weight_planes")
    shape = (spec.n, spec.out_h, spec.out_w, spec.cout)

    kh, kw = te.reduce_axis((0, k), "kh"), te.reduce_axis((0, k), "kw")
    cw = te.reduce_axis((0, spec.words), "cw")
    i, j = te.reduce_axis((0, spec.a_bits), "i"), te.reduce_axis((0, spec.w_bits), "j")
    acc = te.compute(shape, lambda n, y, x, co: te.sum(
        tirx.popcount(data[n, y * s + kh, x * s + kw, i, cw] & weight[kh, kw, j, cw, co])
        .astype(ACC_DTYPE) << (i + j).astype(ACC_DTYPE), axis=[kh, kw, cw, i, j]), name=ACC)

    # sum of the activation codes over each window: the weight-offset correction term
    kh2, kw2 = te.reduce_axis((0, k), "kh2"), te.reduce_axis((0, k), "kw2")
    cw2, i2 = te.reduce_axis((0, spec.words), "cw2"), te.reduce_axis((0, spec.a_bits), "i2")
    window_sum = te.compute(shape[:3], lambda n, y, x: te.sum(
        tirx.popcount(data[n, y * s + kh2, x * s + kw2, i2, cw2]).astype("int32")
        << i2.astype("int32"), axis=[kh2, kw2, cw2, i2]), name=WINDOW_SUM)

    scale, offset = weight_offset(spec.w_bits)
    ep = spec.epilogue
    inputs = [data, weight]
    params = {}
    if ep.output == "codes":
        params["mul"] = te.placeholder((spec.cout,), "int32", name="mul")
        params["add"] = te.placeholder((spec.cout,), "int64", name="add")
        if ep.residual:
            params["residual"] = te.placeholder(shape, "uint8", name="residual")
            params["res_mul"] = te.placeholder((spec.cout,), "int32", name="res_mul")
    elif ep.output == "float32":
        params["mul"] = te.placeholder((spec.cout,), "float32", name="mul")
        params["add"] = te.placeholder((spec.cout,), "float32", name="add")
        if ep.residual:
            params["residual"] = te.placeholder(shape, "float32", name="residual")
    inputs += list(params.values())

    def epilogue(n, y, x, co):
        exact = acc[n, y, x, co].astype("int32") * scale - window_sum[n, y, x] * offset
        if ep.output == "int32":
            return exact
        if ep.output == "codes":
            wide = spec.requant_dtype
            total = exact.astype(wide) * params["mul"][co].astype(wide)
            if ep.residual:
                total = total + (params["residual"][n, y, x, co].astype(wide)
                                 * params["res_mul"][co].astype(wide))
            q = (total + params["add"][co].astype(wide)) >> tirx.const(ep.shift, wide)
            q = tirx.min(tirx.max(q, tirx.const(0, wide)),
                         tirx.const((1 << ep.out_bits) - 1, wide))
            return q.astype("uint8")
        v = exact.astype("float32") * params["mul"][co]
        v = v + params["add"][co]
        if ep.residual:
            v = v + params["residual"][n, y, x, co]
        if ep.relu:
            v = tirx.max(v, tirx.const(0.0, "float32"))
        return v

    out = te.compute(shape, epilogue, name=OUT)
    return inputs, out
