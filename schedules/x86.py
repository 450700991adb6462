"""x86 schedule family: AVX2 (256-bit) and AVX-512 (512-bit) default knobs.

LLVM lowers the vectorized 64-bit popcount to vpshufb nibble lookups + vpsadbw on AVX2
and to vpopcntq on AVX-512 VPOPCNTDQ; the tile keeps 4 x tile_co int32 accumulators in
registers (16 ymm / 32 zmm registers).
"""
from mpqc.schedules.knobs import Knobs


def default_knobs(simd_bits: int) -> Knobs:
    return Knobs(tile_w=4, tile_co=16 if simd_bits >= 512 else 8)
