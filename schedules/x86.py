"""x86 schedule family: AVX2 (256-bit) and AVX-512 (512-bit) default knobs.

LLVM lowers the vectorized 64-bit popcount to vpshufb nibble lookups + vpsadbw on AVX2
and to vpopcntq on AVX-512 VPOPCNTDQ; the tile keeps 4 x tile_co int32 accumulators in
registers (16 ymm / 32 zmm registers).

16- and 32-channel layers take kernels that count in 16-bit lanes. The paired-lane
kernel (paired_x86.py, 16-channel layers) on both widths: 32 16-bit lanes per zmm
instead of 16 per ymm on AVX-512; on AVX2 its pair loads save more than the
double-width vectors cost, with one accumulator pair per step (half the registers, and
the nibble-lookup popcount needs several of them). On AVX2 only, the popcounts add up in
byte lanes (byte_lanes.py) and the half-word kernel (halves_x86.py) takes the
32-channel layers and the 16-channel ones the paired kernel does not: AVX-512's
vpopcntw/vpopcntd count any lane width in one instruction, so there these save nothing.
Alone on a Zen3: 1.9-2.6x the tiled kernel at 16 channels, 1.1-1.5x at 32
(docs/BENCHMARKS.md).

From 2 activation bits up, AVX2 layers that fit it take the lookup-table kernel
(lookup_x86.py): a weight plane's bits index a table of activation sums, so the
activation planes cost nothing and each lookup does 128 products. With its tables it
was 1.7-2.8x the tiled kernel at a2w2 and 5-7x at a4w4 on a Zen3; at 1 activation bit
it lost to the paired and half-word kernels (the tables cost more than the planes).
Not a default on AVX-512: on a Xeon (rocketlake, vpopcntq) it lost at 1-2 activation
bits (0.3-0.8x the best other kernel on ResNet-20's shapes, tables included) and gave
0.97-1.40x at 3-4 bits, 0.93-1.28x at a3w2 (docs/BENCHMARKS.md); the tuner tries it per
layer there too.
"""
from mpqc.schedules.knobs import Knobs


def default_knobs(simd_bits: int) -> Knobs:
    wide = simd_bits >= 512
    if wide:
        return Knobs(tile_w=4, tile_co=16, paired_lanes=True, paired_tile_w=4)
    return Knobs(tile_w=4, tile_co=8, paired_lanes=True, paired_tile_w=1, byte_counts=True,
                 half_words=True, lookup_from_a_bits=2)
