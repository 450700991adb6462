"""TE computes of the bit-serial operators (what is computed, not how: see tiling.py).

Block names are part of the interface: schedules find the stages by them.
"""
from __future__ import annotations

from tvm import te, tirx

from mpqc.schedules.spec import ConvSpec, weight_offset

PACK, ACC, WINDOW_SUM, OUT = "bitpack", "popcount_acc", "window_sum", "epilogue"


# 8 bytes that each hold 0 or 1 in their low bit, times this constant, carry byte j's bit
# to bit 56 + j with no two partial products on the same bit (so no carries): the top
# byte of the product is the 8 bits packed. One multiply replaces 8 shift-and-ORs.
GATHER_BITS = 0x0102040810204080
LOW_BITS = 0x0101010101010101


def bitpack_nhwc(codes: te.Tensor, spec: ConvSpec) -> te.Tensor:
    """uint8 NHWC a-bit codes -> zero-padded bit planes (N, H+2P, W+2P, A, words).

    Padding pixels and padding channels get code 0, which the weight-offset correction
    accounts for (a zero code adds nothing to the window sum either). Channels go in
    groups of 8: their codes as one uint64 (LLVM merges the byte loads), plane i's bits
    gathered into a byte by one multiply (GATHER_BITS), the bytes ORed into the word.
    """
    word, p = spec.word_bits, spec.padding
    dtype = f"uint{word}"
    u64 = "uint64"
    hp, wp = spec.padded_hw
    # a single word holds only `cin` channels: do not loop over empty groups
    groups = -(-min(word, spec.cin) // 8) if spec.words == 1 else word // 8
    g = te.reduce_axis((0, groups), "g")
    every_channel_real = (word * spec.words if spec.words > 1 else 8 * groups) <= spec.cin

    def plane(n, h, w, i, cw):
        inside = tirx.all(h >= p, h < spec.h + p, w >= p, w < spec.w + p)

        def byte(b):
            c = cw * word + g * 8 + b
            if every_channel_real:
                code = codes[n, h - p, w - p, c]
            else:
                code = tirx.if_then_else(c < spec.cin,
                                         codes[n, h - p, w - p, tirx.min(c, spec.cin - 1)],
                                         tirx.const(0, "uint8"))
            return code.astype(u64) << tirx.const(8 * b, u64)

        eight = byte(0)
        for b in range(1, 8):
            eight = eight | byte(b)
        bits = (eight >> i.astype(u64)) & tirx.const(LOW_BITS, u64)
        packed = ((bits * tirx.const(GATHER_BITS, u64)) >> tirx.const(56, u64)).astype(dtype)
        return te.sum(tirx.if_then_else(inside, packed << (g * 8).astype(dtype),
                                        tirx.const(0, dtype)), axis=g)

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
    acc_t = spec.acc_dtype
    acc = te.compute(shape, lambda n, y, x, co: te.sum(
        tirx.popcount(data[n, y * s + kh, x * s + kw, i, cw] & weight[kh, kw, j, cw, co])
        .astype(acc_t) << (i + j).astype(acc_t), axis=[kh, kw, cw, i, j]), name=ACC)

    # sum of the activation codes over each window: the weight-offset correction term
    kh2, kw2 = te.reduce_axis((0, k), "kh2"), te.reduce_axis((0, k), "kw2")
    cw2, i2 = te.reduce_axis((0, spec.words), "cw2"), te.reduce_axis((0, spec.a_bits), "i2")
    window_sum = te.compute(shape[:3], lambda n, y, x: te.sum(
        tirx.popcount(data[n, y * s + kh2, x * s + kw2, i2, cw2]).astype("int32")
        << i2.astype("int32"), axis=[kh2, kw2, cw2, i2]), name=WINDOW_SUM)

    scale, offset = weight_offset(spec.w_bits)
    inputs = [data, weight]
    params = {param: te.placeholder(shape_, dtype, name=param)
              for param, (dtype, shape_) in epilogue_params(spec).items()}
    inputs += list(params.values())

    def epilogue(n, y, x, co):
        exact = acc[n, y, x, co].astype("int32") * scale - window_sum[n, y, x] * offset
        return epilogue_value(spec, exact, lambda param: (
            params[param][n, y, x, co] if param == "residual" else params[param][co]))

    out = te.compute(shape, epilogue, name=OUT)
    return inputs, out


def epilogue_params(spec: ConvSpec) -> dict[str, tuple[str, tuple]]:
    """{name: (dtype, shape)} of the epilogue's inputs, in argument order."""
    ep, shape = spec.epilogue, (spec.n, spec.out_h, spec.out_w, spec.cout)
    per_channel = (spec.cout,)
    if ep.output == "codes":
        params = {"mul": ("int32", per_channel), "add": ("int64", per_channel)}
        if ep.residual:
            params.update(residual=("uint8", shape), res_mul=("int32", per_channel))
        return params
    if ep.output == "float32":
        params = {"mul": ("float32", per_channel), "add": ("float32", per_channel)}
        if ep.residual:
            params["residual"] = ("float32", shape)
        return params
    return {}


def epilogue_value(spec: ConvSpec, exact, load):
    """The output value from the exact integer result (int32, scalar or vector);
    `load(name)` gives the epilogue input `name` at the same output position."""
    ep = spec.epilogue
    if ep.output == "int32":
        return exact
    lanes = exact.ty.dtype.lanes

    def typed(dtype):
        return dtype if lanes == 1 else f"{dtype}x{lanes}"

    def const(value, dtype):
        c = tirx.const(value, dtype)
        return c if lanes == 1 else tirx.Broadcast(c, lanes)

    if ep.output == "codes":
        wide = spec.requant_dtype
        total = exact.astype(typed(wide)) * load("mul").astype(typed(wide))
        if ep.residual:
            total = total + (load("residual").astype(typed(wide))
                             * load("res_mul").astype(typed(wide)))
        q = (total + load("add").astype(typed(wide))) >> const(ep.shift, wide)
        q = tirx.min(tirx.max(q, const(0, wide)), const((1 << ep.out_bits) - 1, wide))
        return q.astype(typed("uint8"))
    v = exact.astype(typed("float32")) * load("mul")
    v = v + load("add")
    if ep.residual:
        v = v + load("residual")
    if ep.relu:
        v = tirx.max(v, const(0.0, "float32"))
    return v


def conv_arguments(spec: ConvSpec, name: str, data: tuple, weight: tuple):
    """Inside `T.prim_func()` of a kernel written with TVM's IR builder: its name and
    arguments, (data buffer, weight buffer, {epilogue param: buffer}, out buffer).
    `data` and `weight` are (shape, dtype) of the kernel's input layouts."""
    from tvm.script.ir_builder import tirx as T

    T.func_name(name)
    T.func_attr({"global_symbol": name, "tirx.noalias": True})
    data_buf = T.arg("data", T.buffer(*data))
    weight_buf = T.arg("weight", T.buffer(*weight))
    params = {param: T.arg(param, T.buffer(shape, dtype))
              for param, (dtype, shape) in epilogue_params(spec).items()}
    out = T.arg("out", T.buffer((spec.n, spec.out_h, spec.out_w, spec.cout),
                                spec.epilogue.out_dtype))
    return data_buf, weight_buf, params, out


def store_outputs(spec: ConvSpec, out, params: dict, wsum, n, y, x, co_first, lanes: int,
                  popcounts) -> None:
    """Store output channels co_first .. co_first + lanes - 1 of pixel (n, y, x), given
    their popcount sums (int32 x lanes) and the pixel's window sum `wsum[x]`: the
    epilogue of the kernels written with TVM's IR builder (paired_x86.py, halves_x86.py)."""
    from tvm.script.ir_builder import tirx as T

    scale, offset = weight_offset(spec.w_bits)
    exact = popcounts * tirx.const(scale, "int32") - tirx.Broadcast(
        wsum[x] * tirx.const(offset, "int32"), lanes)
    co = tirx.Ramp(co_first, 1, lanes)

    def load(param):
        buf = params[param]
        return buf[n, y, x, co] if param == "residual" else buf[co]

    T.buffer_store(out, epilogue_value(spec, exact, load), [n, y, x, co])
