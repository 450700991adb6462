"""What a bit-serial operator computes: shapes, bit pair, packing word and epilogue.

The integer contract shared by the kernels, the numpy references and (later) the
PyTorch fake-quant model:

- activations are unsigned a-bit codes x in [0, 2^a - 1] (after ReLU), NHWC;
- weights are signed codes stored as unsigned w-bit codes u with w_signed = s*u - z:
  offset codes (s=1, z=2^(w-1)) for w >= 2 and bipolar +-1 (s=2, z=1) for w = 1;
- the integer result is acc = sum x * w_signed = s * popcount-conv(x, u) - z * sum(x over
  the window); padded pixels and padded channels are code 0 and change neither term;
- code output (consecutive quantized layers pass codes) is integer-only, so every
  backend and the PyTorch model agree bit for bit (a float multiply-add would be fused
  into an FMA by LLVM on some targets and not others):
  q = clamp((acc * mul[co] + residual * res_mul[co] + add[co]) >> shift, 0, 2^out_bits - 1)
  with mul/res_mul int32 and add int64 (rounding constant 2^(shift-1) folded in); the
  residual is the uint8 codes of the block input; ReLU is the clamp at 0. The kernel
  computes it in int64, or in int32 (4x cheaper on AVX2) when the caller promises
  |mul|, |res_mul| <= mul_bound and |add| <= 2^30 with mul_bound small enough that no
  intermediate overflows (`int32_mul_bound`); both give the same integers;
- float32 output (for float glue after the last quantized layer):
  v = float(acc) * mul[co] + add[co] (+ residual float32) (then max(v, 0) with relu); equal
  to the reference up to float rounding (FMA contraction).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from mpqc.errors import ConfigError

BIT_RANGE = range(1, 9)
OUTPUT_KINDS = ("int32", "float32", "codes")


def check_bits(a_bits: int, w_bits: int, where: str = "") -> None:
    for name, bits in (("activation", a_bits), ("weight", w_bits)):
        if not isinstance(bits, int) or bits not in BIT_RANGE:
            raise ConfigError(f"{where + ': ' if where else ''}{name} bit-width {bits!r} "
                              f"(pair a={a_bits}, w={w_bits}) is outside 1..8")


def check_config(pairs: dict, names: list[str], where: str = "") -> dict[str, tuple[int, int]]:
    """A full bit configuration of the layers `names`, in their order: every name has a
    pair, no other name appears, every pair is in 1..8."""
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(pairs) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}layer {unknown[0]!r} is not a quantizable layer of the "
                          f"model (its quantizable layers: {', '.join(names)})")
    missing = [n for n in names if n not in pairs]
    if missing:
        raise ConfigError(f"{prefix}no bit pair for layer {missing[0]!r}")
    for name in names:
        check_bits(*pairs[name], f"layer {name}")
    return {n: tuple(pairs[n]) for n in names}


def weight_offset(w_bits: int) -> tuple[int, int]:
    """(s, z) with w_signed = s * u - z for the stored unsigned code u."""
    return (2, 1) if w_bits == 1 else (1, 1 << (w_bits - 1))


def weight_code_range(w_bits: int) -> tuple[int, int]:
    """The signed weight codes a w-bit layer may hold (inclusive)."""
    return (-1, 1) if w_bits == 1 else (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1)


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pack_word_for(channels: int, target_word_bits: int) -> int:
    """Smallest word of 8/16/32/64 bits that holds the channels, capped at the target's.

    A 16-channel layer packed into uint64 would waste three quarters of every popcount.
    """
    word = 8
    while word < channels and word < target_word_bits:
        word *= 2
    return word


@dataclass(frozen=True)
class Epilogue:
    """Per-output-channel rescale, optional residual and ReLU, and the output kind."""
    output: str = "int32"        # "int32" (raw acc), "float32", or "codes"
    residual: bool = False       # codes: uint8 codes x res_mul; float32: a float tensor
    relu: bool = False           # float32 only: codes are clamped at 0 anyway
    out_bits: int = 8            # bits of the output codes (output == "codes")
    shift: int = 24              # fixed-point shift of the integer requantization
    mul_bound: int = 0           # promised max |mul|, |res_mul| (0: unknown -> int64)

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise ConfigError(f"epilogue output {self.output!r} is not one of {OUTPUT_KINDS}")
        if self.output == "codes" and self.out_bits not in BIT_RANGE:
            raise ConfigError(f"epilogue output bit-width {self.out_bits} is outside 1..8")
        if self.output == "codes" and not 1 <= self.shift <= 40:
            raise ConfigError(f"epilogue shift {self.shift} is outside 1..40")
        if self.mul_bound < 0:
            raise ConfigError(f"epilogue mul_bound {self.mul_bound} is negative")
        if self.output == "int32" and (self.residual or self.relu):
            raise ConfigError("a raw int32 output takes no residual or ReLU")

    @property
    def out_dtype(self) -> str:
        return {"int32": "int32", "float32": "float32", "codes": "uint8"}[self.output]


@dataclass(frozen=True)
class ConvSpec:
    """One bit-serial NHWC convolution (batch n, square kernel, symmetric zero padding)."""
    n: int
    h: int
    w: int
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    a_bits: int
    w_bits: int
    word_bits: int = 64
    epilogue: Epilogue = Epilogue()

    def __post_init__(self):
        check_bits(self.a_bits, self.w_bits, self.name)
        if self.stride not in (1, 2):
            raise ConfigError(f"{self.name}: stride {self.stride} (only 1 and 2 are supported)")
        if min(self.n, self.h, self.w, self.cin, self.cout, self.kernel) < 1 or self.padding < 0:
            raise ConfigError(f"{self.name}: sizes must be positive")
        if self.out_h < 1 or self.out_w < 1:
            raise ConfigError(f"{self.name}: kernel {self.kernel} larger than padded input")
        if self.word_bits not in (8, 16, 32, 64):
            raise ConfigError(f"{self.name}: pack word of {self.word_bits} bits")

    @property
    def name(self) -> str:
        return (f"conv{self.kernel}x{self.kernel}s{self.stride}p{self.padding}_"
                f"{self.h}x{self.w}x{self.cin}-{self.cout}_a{self.a_bits}w{self.w_bits}")

    @property
    def words(self) -> int:
        return -(-self.cin // self.word_bits)

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.h + 2 * self.padding, self.w + 2 * self.padding

    @property
    def out_h(self) -> int:
        return conv_out_size(self.h, self.kernel, self.stride, self.padding)

    @property
    def out_w(self) -> int:
        return conv_out_size(self.w, self.kernel, self.stride, self.padding)

    @property
    def macs(self) -> int:
        return self.n * self.out_h * self.out_w * self.cout * self.kernel ** 2 * self.cin

    @property
    def acc_bound(self) -> int:
        """Largest |acc| any codes can give: every product at its extreme."""
        w_max = 1 if self.w_bits == 1 else 1 << (self.w_bits - 1)
        return ((1 << self.a_bits) - 1) * w_max * self.kernel ** 2 * self.cin

    @property
    def popcount_bound(self) -> int:
        """Largest popcount accumulator (before the weight offset): every bit set."""
        channels = self.words * self.word_bits
        return ((1 << self.a_bits) - 1) * ((1 << self.w_bits) - 1) * self.kernel ** 2 * channels

    @property
    def acc_dtype(self) -> str:
        """Popcount accumulator: the word's own lane width where the bound fits (no
        widening per popcount: a 16-channel layer adds 16-bit lanes, 32 per zmm), wider
        where it does not; at least 16 bits."""
        bits = max(self.word_bits, 16)
        while bits < 64 and self.popcount_bound >= 1 << (bits - 1):
            bits *= 2
        return f"int{bits}"

    @property
    def int32_mul_bound(self) -> int:
        """Largest mul_bound for which the requantization fits int32 arithmetic:
        (|acc| + 255) * mul_bound + 2^30 < 2^31."""
        return ((1 << 30) - 1) // (self.acc_bound + 255)

    @property
    def requant_dtype(self) -> str:
        ep = self.epilogue
        fits = 0 < ep.mul_bound <= self.int32_mul_bound
        return "int32" if fits else "int64"

    def with_(self, **changes) -> "ConvSpec":
        return replace(self, **changes)


def dense_spec(n: int, in_features: int, out_features: int, a_bits: int, w_bits: int,
               word_bits: int = 64, epilogue: Epilogue = Epilogue()) -> ConvSpec:
    """A dense layer is a 1x1 convolution over a 1x1 image: one compute serves both."""
    return ConvSpec(n=n, h=1, w=1, cin=in_features, cout=out_features, kernel=1, stride=1,
                    padding=0, a_bits=a_bits, w_bits=w_bits, word_bits=word_bits,
                    epilogue=epilogue)
