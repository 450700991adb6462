"""x86 schedule family: AVX2 (256-bit) and AVX-512 (512-bit) default knobs.

LLVM lowers the vectorized 64-bit popcount to vpshufb nibble lookups + vpsadbw on AVX2
and to vpopcntq on AVX-512 VPOPCNTDQ; the tile keeps 4 x tile_co int32 accumulators in
registers (16 ymm / 32 zmm registers). On AVX-512 the 16-channel layers take the
paired-lane kernel (paired_x86.py): 32 16-bit lanes per zmm instead of 16 per ymm.
"""
from mpqc.schedules.knobs import Knobs


def default_knobs(simd_bits: int) -> Knobs:
    wide = simd_bits >= 512
    return Knobs(tile_w=4, tile_co=16 if wide else 8, paired_lanes=wide)
