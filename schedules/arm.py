"""ARM64 schedule family: NEON (128-bit) default knobs.

LLVM lowers the vectorized popcount to `cnt` on 16 bytes followed by pairwise widening
adds (`uaddlp`); 32 128-bit registers hold a 4 x 8 tile of int32 accumulators easily.
"""
from mpqc.schedules.knobs import Knobs


def default_knobs(simd_bits: int) -> Knobs:
    return Knobs(tile_w=4, tile_co=8)
