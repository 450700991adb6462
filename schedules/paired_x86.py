"""The 16-channel bit-serial convolution with two packed words per vector lane pair.

A 16-channel layer packs each pixel's plane into one 16-bit word. The tiled schedule
(tiling.py) broadcasts that word to a vector of 16 output channels with `vpbroadcastw`,
which costs a shuffle-port uop on x86 next to the popcount that already needs that
port: both compete for port 5 and a 512-bit register holds only 16 lanes of the 32.
Here two adjacent words of the packed data (the planes of two neighbouring pixels at 1
activation bit, stride 1; two consecutive planes of one pixel at an even number of
activation bits) are loaded as one 32-bit value, broadcast by the load port alone
(`vpbroadcastd` from memory), and ANDed with a vector that holds each output channel's
weight word twice: lane 2c + k pairs channel c with word k. One AND, one `vpopcntw` and
one add then do the work of two, on 32 lanes. The halves separate at the end with a
32-bit mask and shift, no shuffles.

Same arguments and results as the tiled kernel (`compute.bitserial_conv2d_nhwc`), so the
lowering, the measurement and the checks take either. Layers it does not fit (another
word size, an odd activation bit-width above 1, 1 bit at stride 2) keep the tiled one.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from mpqc.schedules.byte_lanes import popcount_sum_u16
from mpqc.schedules.compute import conv_arguments, store_outputs
from mpqc.schedules.knobs import largest_divisor_at_most, paired_lanes_apply
from mpqc.schedules.spec import ConvSpec

GROUP = 16   # output channels per 32-lane vector (two 16-bit lanes each)

__all__ = ["paired_conv_prim_func", "paired_lanes_apply"]


def _u16x32_const(value: int):
    return tirx.Broadcast(tirx.const(value, "uint16"), 2 * GROUP)


def _doubled_weights(weight, kh, kw, j, g):
    """Channel c's weight word in lanes 2c and 2c + 1 (LLVM hoists it out of the rows)."""
    w = tirx.BufferLoad(weight, [kh, kw, j, 0, tirx.Ramp(g * GROUP, 1, GROUP)])
    w32 = w.astype(f"uint32x{GROUP}")
    return tirx.reinterpret(f"uint16x{2 * GROUP}",
                            w32 | (w32 << tirx.Broadcast(tirx.const(16, "uint32"), GROUP)))


def _pair_sum(flat, weight, spec: ConvSpec, n, y, x0, g, byte_counts: bool):
    """uint16x32: sum over the window, planes and weight planes of popcount(pair & w)
    << shift, for the pair of words starting at input column x0 (times A, plus 2p).
    byte_counts: counted in byte lanes, widened per chunk (byte_lanes.py; AVX2)."""
    a, k, s = spec.a_bits, spec.kernel, spec.stride
    hp, wp = spec.padded_hw
    terms = []
    for kh in range(k):
        for kw in range(k):
            for p in range(max(a // 2, 1)):
                start = ((n * hp + y * s + kh) * wp + x0 + kw) * a + 2 * p
                pair = tirx.reinterpret("uint32", tirx.BufferLoad(flat, [tirx.Ramp(start, 1, 2)]))
                data = tirx.reinterpret(f"uint16x{2 * GROUP}", tirx.Broadcast(pair, GROUP))
                terms += [(data & _doubled_weights(weight, kh, kw, j, g),
                           j + (0 if a == 1 else 2 * p)) for j in range(spec.w_bits)]
    if byte_counts:
        return popcount_sum_u16(terms, 2 * GROUP)
    total = None
    for value, shift in terms:
        term = tirx.popcount(value)
        if shift:
            term = term << _u16x32_const(shift)
        total = term if total is None else total + term
    return total


def _halves(acc):
    """int32x16 of the even lanes (word 0) and of the odd lanes (word 1)."""
    wide = tirx.reinterpret(f"uint32x{GROUP}", acc)
    low = wide & tirx.Broadcast(tirx.const(0xFFFF, "uint32"), GROUP)
    high = wide >> tirx.Broadcast(tirx.const(16, "uint32"), GROUP)
    return low.astype(f"int32x{GROUP}"), high.astype(f"int32x{GROUP}")


def _window_sum(pixels, spec: ConvSpec, n, y, x):
    """Sum of the activation codes over output pixel x's window (vectorized in x).
    `pixels` views the data as one (16 * A)-bit word per pixel (A = 1, 2 or 4), so the
    loads along a row are contiguous: per-plane 16-bit loads (stride A) would gather."""
    a, k, s = spec.a_bits, spec.kernel, spec.stride
    hp, wp = spec.padded_hw
    dtype = f"uint{16 * a}"
    total = None
    for kh in range(k):
        for kw in range(k):
            word = pixels[(n * hp + y * s + kh) * wp + x * s + kw]
            for i in range(a):
                plane = (word >> tirx.const(16 * i, dtype)) & tirx.const(0xFFFF, dtype)
                term = tirx.popcount(plane).astype("int32") << tirx.const(i, "int32")
                total = term if total is None else total + term
    return total


def paired_conv_prim_func(spec: ConvSpec, tile: int, name: str = "main",
                          byte_counts: bool = False) -> tirx.PrimFunc:
    """The convolution of `spec` (paired_lanes_apply) with `tile` accumulator vectors
    per step along a row, epilogue as in compute.py."""
    if not paired_lanes_apply(spec):
        raise ValueError(f"{spec.name}: the paired-lane kernel needs 16-bit words, a "
                         "multiple of 16 output channels and 1 activation bit at stride 1 "
                         "or 2 or 4 activation bits")
    n_, oh, ow, cout = spec.n, spec.out_h, spec.out_w, spec.cout
    hp, wp = spec.padded_hw
    a, k = spec.a_bits, spec.kernel
    pixels_per_acc = 2 if a == 1 else 1
    tile = largest_divisor_at_most(ow // pixels_per_acc, tile)
    steps, groups = ow // (pixels_per_acc * tile), cout // GROUP
    lanes = largest_divisor_at_most(ow, GROUP)

    with IRBuilder() as builder:
        with T.prim_func():
            data, weight, params, out = conv_arguments(
                spec, name, ((n_, hp, wp, a, 1), "uint16"),
                ((k, k, spec.w_bits, 1, cout), "uint16"))
            flat = T.decl_buffer((n_ * hp * wp * a,), "uint16", data=data.data)
            pixels = T.decl_buffer((n_ * hp * wp,), f"uint{16 * a}", data=data.data)
            with T.parallel(0, n_ * oh) as row:
                n, y = row // oh, row % oh
                wsum = T.decl_buffer((ow,), "int32", scope="local")
                # the window sums of the row, vectorized along it
                with T.serial(0, ow // lanes) as xo:
                    with T.vectorized(0, lanes) as xi:
                        T.buffer_store(wsum, _window_sum(pixels, spec, n, y,
                                                         xo * lanes + xi),
                                       [xo * lanes + xi])

                def store(x, g, popcounts):
                    store_outputs(spec, out, params, wsum, n, y, x, g * GROUP, GROUP,
                                  popcounts)

                with T.serial(0, groups) as g:
                    with T.serial(0, steps) as step:
                        for t in range(tile):       # unrolled here: registers
                            first = (step * tile + t) * pixels_per_acc
                            low, high = _halves(_pair_sum(
                                flat, weight, spec, n, y, first * spec.stride, g, byte_counts))
                            if a == 1:
                                store(first, g, low)
                                store(first + 1, g, high)
                            else:
                                store(first, g, low + (high << tirx.Broadcast(
                                    tirx.const(1, "int32"), GROUP)))
    return builder.get()
