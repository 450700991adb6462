"""Bit-packing of activation codes with x86 byte movemask (`pmovmskb`).

Plane i of 16 or 32 channels' codes is one instruction away: shift every code byte left
by 7 - i (bit i to the byte's top bit) and `pmovmskb` gathers the 16/32 top bits into an
integer. A 64-channel plane of a 56x56 image packs ~14x faster than the portable
multiply gather (compute.py), which stays the pack of every other target and of channel
counts that are not a multiple of 16 (a vector load would read the next pixel's codes).
Same output as `compute.bitpack_nhwc`: (N, H+2P, W+2P, A, words), zero borders.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mpqc.schedules.spec import ConvSpec

# channels per movemask -> LLVM intrinsic (SSE2 for 16 bytes, AVX2 for 32)
MOVEMASK = {16: "llvm.x86.sse2.pmovmskb.128", 32: "llvm.x86.avx2.pmovmskb"}


def movemask_applies(spec: ConvSpec) -> bool:
    return spec.cin % 16 == 0 and spec.word_bits >= 16


def _chunk(spec: ConvSpec) -> int:
    return 32 if spec.word_bits >= 32 and spec.cin % 32 == 0 else 16


def _plane_word(codes, n, y, x, i, cw, spec: ConvSpec):
    """The packed word of plane i, word cw at pixel (y, x) of the unpadded codes."""
    word, chunk = spec.word_bits, _chunk(spec)
    dtype = f"uint{word}"
    shift = tirx.Broadcast(tirx.const(7, "uint8") - i.astype("uint8"), chunk)
    value = None
    for k in range(word // chunk):
        c0 = cw * word + k * chunk
        if k * chunk >= spec.cin:            # a word wider than the layer: zero chunks
            break
        partial = spec.words > 1 and spec.words * word > spec.cin
        # a chunk past the channels (last word only) loads the last real chunk instead,
        # so every load stays inside the buffer, and is zeroed below
        start = tirx.min(c0, spec.cin - chunk) if partial else c0
        lanes = tirx.BufferLoad(codes, [n, y, x, tirx.Ramp(start, 1, chunk)])
        top = tirx.reinterpret(f"int8x{chunk}", lanes << shift)
        mask = tirx.call_llvm_pure_intrin("int32", MOVEMASK[chunk], top)
        part = mask.astype("uint32").astype(dtype)
        if k:
            part = part << tirx.const(k * chunk, dtype)
        if partial:
            part = tirx.if_then_else(c0 < spec.cin, part, tirx.const(0, dtype))
        value = part if value is None else value | part
    return value


def bitpack_movemask_prim_func(spec: ConvSpec, name: str = "bitpack") -> tirx.PrimFunc:
    """uint8 NHWC codes -> padded bit planes; rows in parallel, planes unrolled."""
    if not movemask_applies(spec):
        raise ValueError(f"{spec.name}: movemask packing needs a multiple of 16 channels")
    n_, h, w, cin, p, a = spec.n, spec.h, spec.w, spec.cin, spec.padding, spec.a_bits
    hp, wp = spec.padded_hw
    words, dtype = spec.words, f"uint{spec.word_bits}"

    # block form (one block per packed word): Relax's op-pattern analysis reads blocks
    @T.prim_func(s_tir=True)
    def bitpack(codes: T.Buffer((n_, h, w, cin), "uint8"),
                planes: T.Buffer((n_, hp, wp, a, words), dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for ny in T.parallel(n_ * hp):
            for x in range(wp):
                for i in T.unroll(a):
                    for cw in range(words):
                        with T.sblock("bitpack"):
                            vn = T.axis.spatial(n_, ny // hp)
                            vy = T.axis.spatial(hp, ny % hp)
                            vx, vi, vcw = T.axis.remap("SSS", [x, i, cw])
                            T.reads(codes[vn, 0:h, 0:w, 0:cin])
                            T.writes(planes[vn, vy, vx, vi, vcw])
                            if vy >= p and vy < h + p and vx >= p and vx < w + p:
                                planes[vn, vy, vx, vi, vcw] = _plane_word(
                                    codes, vn, vy - p, vx - p, vi, vcw, spec)
                            else:
                                planes[vn, vy, vx, vi, vcw] = T.Cast(dtype, 0)

    return bitpack
