"""x86 schedule family: AVX2 (256-bit) and AVX-512 (512-bit) default knobs.

LLVM lowers the vectorized 64-bit popcount to vpshufb nibble lookups + vpsadbw on AVX2
and to vpopcntq on AVX-512 VPOPCNTDQ; the tile keeps 4 x tile_co int32 accumulators in
registers (16 ymm / 32 zmm registers). The 16-channel layers take the paired-lane kernel
(paired_x86.py) on both: 32 16-bit lanes per zmm instead of 16 per ymm on AVX-512; on
AVX2 its pair loads and broadcasts save more than the double-width vectors cost, with one
accumulator pair per step (AVX2 has half the registers, and the nibble-lookup popcount
needs several of them): alone on a Zen3, 1.4-2.2x the tiled kernel at 16 -> 16 and
16 -> 32 channels, every (a, w) pair it takes (docs/BENCHMARKS.md).
"""
from mpqc.schedules.knobs import Knobs


def default_knobs(simd_bits: int) -> Knobs:
    wide = simd_bits >= 512
    return Knobs(tile_w=4, tile_co=16 if wide else 8, paired_lanes=True,
                 paired_tile_w=4 if wide else 1)
