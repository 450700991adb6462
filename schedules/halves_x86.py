"""The 32-bit-word bit-serial convolution counted in 16-bit lanes (AVX2).

AVX2 has no vector popcount: LLVM counts bits with two `vpshufb` nibble lookups per
vector, then, for 32-bit lanes, unpacks, sums bytes with `vpsadbw` and packs back, most
of it on the two shuffle pipes the lookups already use. For 16-bit lanes the byte counts
combine with a shift and an add instead. Here a 32-channel layer's word (one 32-bit
word per pixel and plane) is broadcast from memory, ANDed with a vector of each output
channel's weight word and counted as 16-bit halves; the two halves of a channel's lane
add up only once, after the whole window. 16-bit accumulators hold the sum where the
bound fits (half_words_apply).

Same arguments and results as the tiled kernel (`compute.bitserial_conv2d_nhwc`).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from mpqc.schedules.byte_lanes import popcount_sum_u16
from mpqc.schedules.compute import epilogue_params, epilogue_value
from mpqc.schedules.knobs import half_words_apply, largest_divisor_at_most
from mpqc.schedules.spec import ConvSpec, weight_offset

GROUP = 8    # output channels per 256-bit vector of 32-bit words (16 16-bit lanes)

__all__ = ["half_words_conv_prim_func", "half_words_apply"]


def _window_sum(flat, spec: ConvSpec, n, y, x):
    """Sum of the activation codes over output pixel x's window (scalar: the vector
    loop would gather the planes, and this is a small part of the work)."""
    a, k, s = spec.a_bits, spec.kernel, spec.stride
    hp, wp = spec.padded_hw
    total = None
    for kh in range(k):
        for kw in range(k):
            for i in range(a):
                for word in range(spec.words):
                    index = (((n * hp + y * s + kh) * wp + x * s + kw) * a + i) * spec.words + word
                    term = tirx.popcount(flat[index]).astype("int32") << tirx.const(i, "int32")
                    total = term if total is None else total + term
    return total


def _half_sum(data, weight, spec: ConvSpec, n, y, x, g):
    """uint16x(2 GROUP): per 16-bit half of each channel's lane, the sum over the window,
    planes, words and weight planes of popcount(data & w) << (i + j)."""
    a, k, s = spec.a_bits, spec.kernel, spec.stride
    lanes = 2 * GROUP
    terms = []
    for kh in range(k):
        for kw in range(k):
            for word in range(spec.words):
                w_vecs = [weight[kh, kw, j, word, tirx.Ramp(g * GROUP, 1, GROUP)]
                          for j in range(spec.w_bits)]
                for i in range(a):
                    plane = tirx.Broadcast(data[n, y * s + kh, x * s + kw, i, word], GROUP)
                    terms += [(tirx.reinterpret(f"uint16x{lanes}", plane & w_vecs[j]), i + j)
                              for j in range(spec.w_bits)]
    return popcount_sum_u16(terms, lanes)


def _join_halves(acc):
    """int32xGROUP: each channel's two 16-bit halves added."""
    wide = tirx.reinterpret(f"uint32x{GROUP}", acc)
    low = wide & tirx.Broadcast(tirx.const(0xFFFF, "uint32"), GROUP)
    high = wide >> tirx.Broadcast(tirx.const(16, "uint32"), GROUP)
    return (low + high).astype(f"int32x{GROUP}")


def half_words_conv_prim_func(spec: ConvSpec, tile: int, name: str = "main") -> tirx.PrimFunc:
    """The convolution of `spec` (half_words_apply) with `tile` output pixels per step
    along a row, epilogue as in compute.py."""
    if not half_words_apply(spec):
        raise ValueError(f"{spec.name}: the half-word kernel needs 32-bit words, a multiple "
                         f"of {GROUP} output channels and a popcount bound under 2^16")
    n_, oh, ow, cout = spec.n, spec.out_h, spec.out_w, spec.cout
    hp, wp = spec.padded_hw
    a, k, words = spec.a_bits, spec.kernel, spec.words
    tile = largest_divisor_at_most(ow, tile)
    steps, groups = ow // tile, cout // GROUP
    scale, offset = weight_offset(spec.w_bits)

    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"global_symbol": name, "tirx.noalias": True})
            data = T.arg("data", T.buffer((n_, hp, wp, a, words), "uint32"))
            weight = T.arg("weight", T.buffer((k, k, spec.w_bits, words, cout), "uint32"))
            params = {param: T.arg(param, T.buffer(shape, dtype))
                      for param, (dtype, shape) in epilogue_params(spec).items()}
            out = T.arg("out", T.buffer((n_, oh, ow, cout), spec.epilogue.out_dtype))
            flat = T.decl_buffer((n_ * hp * wp * a * words,), "uint32", data=data.data)
            with T.parallel(0, n_ * oh) as row:
                n, y = row // oh, row % oh
                wsum = T.decl_buffer((ow,), "int32", scope="local")
                with T.serial(0, ow) as x:
                    T.buffer_store(wsum, _window_sum(flat, spec, n, y, x), [x])

                def store(x, g, popcounts):
                    exact = popcounts * tirx.const(scale, "int32") - tirx.Broadcast(
                        wsum[x] * tirx.const(offset, "int32"), GROUP)
                    co = tirx.Ramp(g * GROUP, 1, GROUP)

                    def load(param):
                        buf = params[param]
                        return buf[n, y, x, co] if param == "residual" else buf[co]

                    T.buffer_store(out, epilogue_value(spec, exact, load), [n, y, x, co])

                with T.serial(0, groups) as g:
                    with T.serial(0, steps) as step:
                        for t in range(tile):       # unrolled here: registers
                            x = step * tile + t
                            store(x, g, _join_halves(_half_sum(data, weight, spec, n, y, x, g)))
    return builder.get()
