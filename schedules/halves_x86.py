"""The bit-serial convolution of 32- and 16-bit words counted in 16-bit lanes (AVX2).

AVX2 has no vector popcount: LLVM counts bits with two `vpshufb` nibble lookups per
byte vector; 32-bit lanes then need unpacks, `vpsadbw` and a pack to add the bytes up,
on the shuffle pipes the lookups already use. Here a layer's word (one per pixel, plane
and word of channels) is broadcast from memory, ANDed with a vector of each output
channel's weight word, and its bits are counted in byte lanes and added up in 16-bit
lanes (byte_lanes.py): a 32-bit word as two 16-bit halves, which add up only once,
after the whole window. 16-channel layers that the paired kernel (paired_x86.py) does
not take (an odd number of activation bits, 1 bit at stride 2) come here too, one
16-bit lane per channel. 16-bit accumulators hold the sum where the bound fits
(half_words_apply).

Same arguments and results as the tiled kernel (`compute.bitserial_conv2d_nhwc`).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from mpqc.schedules.byte_lanes import popcount_sum_u16
from mpqc.schedules.compute import conv_arguments, store_outputs
from mpqc.schedules.knobs import half_words_apply, largest_divisor_at_most
from mpqc.schedules.spec import ConvSpec

VECTOR_BITS = 256  # one ymm register: 16 16-bit lanes, 16 channels of 16-bit words, 8 of 32

__all__ = ["half_words_conv_prim_func", "half_words_apply"]


def group(spec: ConvSpec) -> int:
    """Output channels per vector."""
    return VECTOR_BITS // spec.word_bits


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
    """uint16x16: per 16-bit half of each channel's lane (or the whole lane), the sum
    over the window, planes, words and weight planes of popcount(data & w) << (i + j)."""
    a, k, s = spec.a_bits, spec.kernel, spec.stride
    lanes, size = VECTOR_BITS // 16, group(spec)
    terms = []
    for kh in range(k):
        for kw in range(k):
            for word in range(spec.words):
                w_vecs = [weight[kh, kw, j, word, tirx.Ramp(g * size, 1, size)]
                          for j in range(spec.w_bits)]
                for i in range(a):
                    plane = tirx.Broadcast(data[n, y * s + kh, x * s + kw, i, word], size)
                    terms += [(tirx.reinterpret(f"uint16x{lanes}", plane & w_vecs[j]), i + j)
                              for j in range(spec.w_bits)]
    return popcount_sum_u16(terms, lanes)


def _join_halves(acc, spec: ConvSpec):
    """int32 x group: each channel's count (32-bit words: its two 16-bit halves added)."""
    size = group(spec)
    if spec.word_bits == 16:
        return acc.astype(f"int32x{size}")
    wide = tirx.reinterpret(f"uint32x{size}", acc)
    low = wide & tirx.Broadcast(tirx.const(0xFFFF, "uint32"), size)
    high = wide >> tirx.Broadcast(tirx.const(16, "uint32"), size)
    return (low + high).astype(f"int32x{size}")


def half_words_conv_prim_func(spec: ConvSpec, tile: int, name: str = "main") -> tirx.PrimFunc:
    """The convolution of `spec` (half_words_apply) with `tile` output pixels per step
    along a row, epilogue as in compute.py."""
    if not half_words_apply(spec):
        raise ValueError(f"{spec.name}: the half-word kernel needs 16- or 32-bit words, "
                         f"a multiple of {group(spec)} output channels and a popcount bound "
                         "under 2^16")
    n_, oh, ow, cout = spec.n, spec.out_h, spec.out_w, spec.cout
    hp, wp = spec.padded_hw
    a, k, words = spec.a_bits, spec.kernel, spec.words
    tile = largest_divisor_at_most(ow, tile)
    size = group(spec)
    steps, groups = ow // tile, cout // size
    word = f"uint{spec.word_bits}"

    with IRBuilder() as builder:
        with T.prim_func():
            data, weight, params, out = conv_arguments(
                spec, name, ((n_, hp, wp, a, words), word),
                ((k, k, spec.w_bits, words, cout), word))
            flat = T.decl_buffer((n_ * hp * wp * a * words,), word, data=data.data)
            with T.parallel(0, n_ * oh) as row:
                n, y = row // oh, row % oh
                wsum = T.decl_buffer((ow,), "int32", scope="local")
                with T.serial(0, ow) as x:
                    T.buffer_store(wsum, _window_sum(flat, spec, n, y, x), [x])

                def store(x, g, popcounts):
                    store_outputs(spec, out, params, wsum, n, y, x, g * size, size,
                                  popcounts)

                with T.serial(0, groups) as g:
                    with T.serial(0, steps) as step:
                        for t in range(tile):       # unrolled here: registers
                            x = step * tile + t
                            counts = _half_sum(data, weight, spec, n, y, x, g)
                            store(x, g, _join_halves(counts, spec))
    return builder.get()
