"""The knobs of the bit-serial schedule (tiling.py), as data: tuning searches them, the
tuning log stores them, target families give their defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from mpqc.errors import ConfigError
from mpqc.schedules.spec import ConvSpec

REDUCTION_ORDERS = ("window_first", "bits_first")


@dataclass(frozen=True)
class Knobs:
    tile_w: int = 4             # output pixels per tile (unrolled)
    tile_co: int = 8            # output channels per tile (vector lanes)
    unroll_bits: bool = True    # unroll the a x w bit-plane loops
    reduction_order: str = "window_first"  # (kh, kw, words, i, j) or (i, j, kh, kw, words)
    parallel: bool = True       # output rows across threads
    paired_lanes: bool = False  # 16-channel layers: two words per lane pair (paired_x86.py)
    paired_tile_w: int = 4      # steps per row tile of the 16-bit-lane kernels (paired, half-word)
    byte_counts: bool = False   # paired kernel: popcounts in byte lanes (byte_lanes.py)
    half_words: bool = False    # 32-/16-bit words counted in 16-bit lanes (halves_x86.py)
    lookup_from_a_bits: int = 0  # lookup-table kernel (lookup_x86.py) from this many
                                 # activation bits up, where it applies (0: never)

    def __post_init__(self):
        if self.tile_w < 1 or self.tile_co < 1 or self.paired_tile_w < 1:
            raise ConfigError(f"schedule knobs: tiles must be >= 1, got {self}")
        if not 0 <= self.lookup_from_a_bits <= 8:
            raise ConfigError(f"schedule knobs: lookup_from_a_bits must be 0..8, got {self}")
        if self.reduction_order not in REDUCTION_ORDERS:
            raise ConfigError(f"schedule knobs: reduction_order {self.reduction_order!r} "
                              f"is not one of {REDUCTION_ORDERS}")

    def fit(self, spec: ConvSpec) -> "Knobs":
        """Tiles that divide the layer: shrink those that do not (a 10-class dense layer
        has 10 channels). The channel tile is the vector axis of the accumulators, so it
        shrinks to a whole number of 8-lane vectors where one divides the channels: 24
        channels tile as 8, not 12 (whose partial vectors ran 2.4-4.7x slower)."""
        lookup = (0 < self.lookup_from_a_bits <= spec.a_bits) and lookup_tables_apply(spec)
        paired = self.paired_lanes and paired_lanes_apply(spec) and not lookup
        halves = self.half_words and half_words_apply(spec) and not paired and not lookup
        return replace(self, tile_w=largest_divisor_at_most(spec.out_w, self.tile_w),
                       tile_co=channel_tile(spec.cout, self.tile_co), paired_lanes=paired,
                       half_words=halves, byte_counts=self.byte_counts and paired,
                       lookup_from_a_bits=self.lookup_from_a_bits if lookup else 0,
                       paired_tile_w=self.paired_tile_w if paired or halves or lookup
                       else Knobs.paired_tile_w)

    @property
    def lookup_tables(self) -> bool:
        """Whether a fitted layer's conv is the lookup-table kernel."""
        return self.lookup_from_a_bits > 0

    def to_json(self) -> dict:
        return asdict(self)


VECTOR_LANES = 8  # int32 lanes of a 256-bit vector; 512-bit and NEON tiles are multiples


def channel_tile(channels: int, limit: int) -> int:
    """`limit` if it divides the channels, else the largest divisor <= limit that is a
    multiple of VECTOR_LANES, else the largest divisor <= limit."""
    if channels % limit == 0:
        return limit
    whole = [d for d in range(VECTOR_LANES, min(channels, limit) + 1, VECTOR_LANES)
             if channels % d == 0]
    return whole[-1] if whole else largest_divisor_at_most(channels, limit)


def paired_lanes_apply(spec: ConvSpec) -> bool:
    """Layers the paired-lane kernel (paired_x86.py) computes: 16-bit words of 16
    channels, whole groups of 16 output channels, 16-bit accumulators, and either pixel
    pairs (1 activation bit, stride 1, an even output width) or plane pairs (2 or 4
    activation bits)."""
    pixel_pairs = spec.a_bits == 1 and spec.stride == 1 and spec.out_w % 2 == 0
    plane_pairs = spec.a_bits in (2, 4)
    return (spec.word_bits == 16 and spec.words == 1 and spec.cout % 16 == 0
            and spec.acc_dtype == "int16" and (pixel_pairs or plane_pairs))


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def half_words_apply(spec: ConvSpec) -> bool:
    """Layers the half-word kernel (halves_x86.py) computes: 32-bit words (or 16-bit
    ones, where the paired kernel does not apply), whole vectors of output channels (8
    or 16), and a popcount sum that fits each 16-bit half (or lane)."""
    per_half = (16 * spec.kernel ** 2 * spec.words
                * ((1 << spec.a_bits) - 1) * ((1 << spec.w_bits) - 1))
    return (spec.word_bits in (16, 32) and spec.cout % (256 // spec.word_bits) == 0
            and per_half < 1 << 16)


def lookup_tables_apply(spec: ConvSpec) -> bool:
    """Layers the lookup-table kernel (lookup_x86.py) computes: at most 4 activation
    bits (a table entry, 4 codes, fits a byte), input channels in pairs of groups of 4,
    output channels in groups of 16, and pixel sums that fit 16 bits."""
    return (spec.a_bits <= 4 and spec.cin % 8 == 0 and spec.cout % 16 == 0
            and spec.cin * ((1 << spec.a_bits) - 1) < 1 << 16)
