"""The bit-serial convolution by table lookup (AVX2): weight bit planes index tables of
activation sums.

Four input channels' bits of one weight plane form a 4-bit number v. For a pixel, the
table of those channels holds T[v] = sum of the activation codes of the channels whose
bit is set in v: 16 bytes, whatever the activation bit-width (4 x 15 = 60 at 4 bits).
`vpshufb` looks up one byte per lane in a 16-byte table, so one instruction gives
sum_c x_c * u_c over 4 channels for 32 (output channel, table) lanes: 128 weight-bit x
activation products, where an AND and a popcount of the same vector give 256 1 x 1-bit
products in about eight instructions. Planes of multi-bit activations cost nothing
extra (they are in the table); each weight plane is one lookup.

Layout: a 256-bit vector is two 16-byte halves, each the table of one group of 4 input
channels (two consecutive groups: one 32-byte load); byte b of a half is output channel
16 g + b, its weight index in the weight vector of the same position. Lookups add up
in byte lanes while a byte cannot overflow, then the two halves add up into 16-bit
lanes of the 16 output channels (32-bit where a sum can reach 2^16), shifted by the
weight plane.

The tables are built once per input pixel by `tables_prim_func` (in place of the bit
packing), padded like the planes, followed by every pixel's channel sum (for the weight
offset term, spec.py; contiguous, so a row's window sums load as vectors). The weights
are stored as index bytes (`pack_weights`). Layers it computes: `lookup_tables_apply`;
x86 only (`vpshufb`; the tuning space offers it to the x86 family alone).
"""
from __future__ import annotations

import numpy as np
from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from mpqc.schedules.compute import conv_arguments, store_outputs
from mpqc.schedules.knobs import largest_divisor_at_most, lookup_tables_apply
from mpqc.schedules.reference import encode_weights
from mpqc.schedules.spec import ConvSpec

CHANNELS = 4    # input channels per table: the 4 bits of a weight index
BLOCK = 16      # output channels per vector (a byte each, in both halves)
VECTOR = 32     # bytes of a 256-bit vector: two tables
BYTE_MAX = 255

__all__ = ["tables_prim_func", "lookup_conv_prim_func", "pack_weights", "tables_reference",
           "tables_shape", "lookup_tables_apply"]


def groups(spec: ConvSpec) -> int:
    return spec.cin // CHANNELS


def _pixels(spec: ConvSpec) -> int:
    hp, wp = spec.padded_hw
    return spec.n * hp * wp


def tables_shape(spec: ConvSpec) -> tuple[int]:
    """Bytes: the tables, (N, H+2P, W+2P, groups, 16) uint8, then the channel sum of
    every padded pixel, (N, H+2P, W+2P) uint16 (little-endian)."""
    return (_pixels(spec) * (groups(spec) * 16 + 2),)


def _sums_base(spec: ConvSpec) -> int:
    """Index of the first pixel sum in the buffer viewed as uint16."""
    return _pixels(spec) * groups(spec) * 8


def tables_reference(codes: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """numpy: the tables and pixel sums of NHWC codes."""
    p, g = spec.padding, groups(spec)
    x = np.pad(codes.astype(np.int64), ((0, 0), (p, p), (p, p), (0, 0)))
    grouped = x.reshape(*x.shape[:3], g, CHANNELS)
    index = np.arange(16)
    bits = (index[:, None] >> np.arange(CHANNELS)) & 1            # (16, 4)
    tables = np.einsum("nhwgc,vc->nhwgv", grouped, bits)
    sums = x.sum(axis=-1).astype("<u2")
    return np.concatenate([tables.astype(np.uint8).ravel(), sums.ravel().view(np.uint8)])


def pack_weights(weights: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Signed codes (KH, KW, Cin, Cout) -> index bytes (KH, KW, groups/2, Wbits,
    Cout/16, 32): half h of a vector holds group 2 i + h, byte b output channel 16 o + b,
    value the 4 bits of plane j of the stored codes of that group's channels."""
    u = encode_weights(weights, spec.w_bits)
    k, g = spec.kernel, groups(spec)
    planes = np.stack([(u >> j) & 1 for j in range(spec.w_bits)])   # (W, KH, KW, Cin, Cout)
    planes = planes.reshape(spec.w_bits, k, k, g, CHANNELS, spec.cout)
    index = (planes << np.arange(CHANNELS)[:, None]).sum(axis=4)    # (W, KH, KW, G, Cout)
    index = index.reshape(spec.w_bits, k, k, g // 2, 2, spec.cout // BLOCK, BLOCK)
    # -> (KH, KW, G/2, W, Cout/16, half, byte)
    packed = index.transpose(1, 2, 3, 0, 5, 4, 6)
    return np.ascontiguousarray(packed.reshape(k, k, g // 2, spec.w_bits, spec.cout // BLOCK,
                                               VECTOR)).astype(np.uint8)


def _u8(value: int, lanes: int):
    return tirx.Broadcast(tirx.const(value, "uint8"), lanes)


def _spread(eight, channel: int):
    """uint8x32: channel `channel` of the first group of 4 in the low half, of the
    second in the high half, masked to the table entries whose index has its bit."""
    # (Shuffle yields at most as many lanes as it is given)
    values = tirx.Shuffle([eight] * 4, [channel] * 16 + [CHANNELS + channel] * 16)
    index = tirx.Ramp(tirx.const(0, "uint8"), tirx.const(1, "uint8"), VECTOR) & _u8(15, VECTOR)
    bit = (index >> _u8(channel, VECTOR)) & _u8(1, VECTOR)
    return values & (_u8(0, VECTOR) - bit)


def _sum_lanes(vector, lanes: int):
    """The sum of a vector's lanes, by halving."""
    while lanes > 1:
        lanes //= 2
        vector = (tirx.Shuffle([vector], list(range(lanes)))
                  + tirx.Shuffle([vector], list(range(lanes, 2 * lanes))))
    return vector


def _in_root_block(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The body inside an opaque root block: Relax asks whether a one-input prim func
    is a reshape (RewriteDataflowReshape), and that analysis reads blocks only."""
    root = s_tir.SBlock([], [], [], "root", func.body)
    return func.with_body(s_tir.SBlockRealize([], True, root))


def tables_prim_func(spec: ConvSpec, name: str = "tables") -> tirx.PrimFunc:
    """uint8 NHWC codes -> tables (tables_shape), rows in parallel."""
    if not lookup_tables_apply(spec):
        raise ValueError(f"{spec.name}: the lookup-table kernel does not take this layer")
    n_, h, w, cin = spec.n, spec.h, spec.w, spec.cin
    hp, wp = spec.padded_hw
    p, g = spec.padding, groups(spec)
    base = _sums_base(spec)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"global_symbol": name, "tirx.noalias": True})
            codes = T.arg("codes", T.buffer((n_, h, w, cin), "uint8"))
            tables = T.arg("tables", T.buffer(tables_shape(spec), "uint8"))
            flat_codes = T.decl_buffer((n_ * h * w * cin,), "uint8", data=codes.data)
            sums = T.decl_buffer((base + _pixels(spec),), "uint16", data=tables.data)
            with T.parallel(0, n_ * hp) as row:
                n, yy = row // hp, row % hp
                with T.serial(0, wp) as xx:
                    pixel = (n * hp + yy) * wp + xx
                    inside = tirx.all(yy >= p, yy < h + p, xx >= p, xx < w + p)
                    with T.If(inside):
                        with T.Then():
                            source = ((n * h + yy - p) * w + xx - p) * cin
                            total = None
                            for pair in range(g // 2):
                                eight = flat_codes[tirx.Ramp(source + 2 * CHANNELS * pair, 1,
                                                             2 * CHANNELS)]
                                table = None
                                for c in range(CHANNELS):
                                    part = _spread(eight, c)
                                    table = part if table is None else table + part
                                T.buffer_store(tables, table, [tirx.Ramp(
                                    (pixel * g + 2 * pair) * 16, 1, VECTOR)])
                                wide = eight.astype(f"uint16x{2 * CHANNELS}")
                                total = wide if total is None else total + wide
                            T.buffer_store(sums, _sum_lanes(total, 2 * CHANNELS),
                                           [base + pixel])
                        with T.Else():
                            with T.serial(0, g) as slot:
                                T.buffer_store(tables, _u8(0, 16),
                                               [tirx.Ramp((pixel * g + slot) * 16, 1, 16)])
                            T.buffer_store(sums, tirx.const(0, "uint16"), [base + pixel])
    return _in_root_block(builder.get())


def _lookup(table, index):
    return tirx.call_llvm_pure_intrin(f"uint8x{VECTOR}", "llvm.x86.avx2.pshuf.b", table, index)


def _widen(chunk):
    """uint16x16: the two halves of a byte vector added, per output channel."""
    low = tirx.Shuffle([chunk], list(range(BLOCK))).astype(f"uint16x{BLOCK}")
    high = tirx.Shuffle([chunk], list(range(BLOCK, VECTOR))).astype(f"uint16x{BLOCK}")
    return low + high


def chunking(spec: ConvSpec) -> tuple[int, int]:
    """(taps per chunk, pairs of groups per chunk): how many lookups add up in byte
    lanes before they are widened. A whole tap's groups where a byte holds them,
    else part of a tap (4 activation bits, 32 or more channels)."""
    entry_max = CHANNELS * ((1 << spec.a_bits) - 1)
    pairs = groups(spec) // 2
    per_tap = 2 * entry_max * pairs // 2   # a byte lane sees one group of each pair
    if per_tap <= BYTE_MAX:
        return min(BYTE_MAX // per_tap, spec.kernel ** 2), pairs
    return 1, BYTE_MAX // entry_max


def sum_dtype(spec: ConvSpec) -> str:
    """Lanes of the per-channel sums: 16 bits where every sum fits, else 32."""
    bound = ((1 << spec.a_bits) - 1) * ((1 << spec.w_bits) - 1) * spec.kernel ** 2 * spec.cin
    return "uint16" if bound < 1 << 16 else "int32"


def _accumulate(flat, weight, spec: ConvSpec, n, y, xs, block, counts, sums):
    """sums[t] (sum_dtype x 16, local) = sum over the window, groups and weight planes of the
    looked-up activation sums << plane, for output pixel xs[t] and output channels
    16 block .. + 15. The window is a loop (chunks of taps); each table is loaded once
    per pixel and looked up by every weight plane, each weight vector once per tile."""
    k, s, planes = spec.kernel, spec.stride, spec.w_bits
    hp, wp = spec.padded_hw
    g, pairs = groups(spec), groups(spec) // 2
    taps_per_chunk, pairs_per_chunk = chunking(spec)
    taps = k * k
    byte_slot = {(t, j): (t * planes + j) * VECTOR for t in range(len(xs)) for j in range(planes)}
    dtype = sum_dtype(spec)

    def clear_counts():
        for offset in byte_slot.values():
            T.buffer_store(counts, _u8(0, VECTOR), [tirx.Ramp(offset, 1, VECTOR)])

    def widen_counts():
        for t in range(len(xs)):
            total = sums[tirx.Ramp(t * BLOCK, 1, BLOCK)]
            for j in range(planes):
                wide = _widen(counts[tirx.Ramp(byte_slot[t, j], 1, VECTOR)])
                if dtype != "uint16":
                    wide = wide.astype(f"{dtype}x{BLOCK}")
                if j:
                    wide = wide << tirx.Broadcast(tirx.const(j, dtype), BLOCK)
                total = total + wide
            T.buffer_store(sums, total, [tirx.Ramp(t * BLOCK, 1, BLOCK)])

    for t in range(len(xs)):
        T.buffer_store(sums, tirx.Broadcast(tirx.const(0, dtype), BLOCK),
                       [tirx.Ramp(t * BLOCK, 1, BLOCK)])
    with T.serial(0, -(-taps // taps_per_chunk)) as chunk:
        clear_counts()
        with T.serial(0, taps_per_chunk) as i:
            tap = chunk * taps_per_chunk + i
            kh, kw = tap // k, tap % k

            def body():
                for pair in range(pairs):
                    if pair and pair % pairs_per_chunk == 0:
                        widen_counts()
                        clear_counts()
                    tables = [flat[tirx.Ramp((((n * hp + y * s + kh) * wp + x * s + kw) * g
                                              + 2 * pair) * 16, 1, VECTOR)] for x in xs]
                    for j in range(planes):
                        index = weight[kh, kw, pair, j, block, tirx.Ramp(0, 1, VECTOR)]
                        for t, table in enumerate(tables):
                            where = [tirx.Ramp(byte_slot[t, j], 1, VECTOR)]
                            T.buffer_store(counts, counts[where[0]] + _lookup(table, index),
                                           where)

            if taps % taps_per_chunk:
                with T.If(tap < taps):
                    with T.Then():
                        body()
            else:
                body()
        widen_counts()


def lookup_conv_prim_func(spec: ConvSpec, tile: int, name: str = "main") -> tirx.PrimFunc:
    """The convolution of `spec` (lookup_tables_apply) from its tables, `tile` output
    pixels per step along a row (unrolled), epilogue as in compute.py."""
    if not lookup_tables_apply(spec):
        raise ValueError(f"{spec.name}: the lookup-table kernel needs at most 4 activation "
                         "bits, input channels in groups of 8 and output channels in "
                         "groups of 16")
    n_, oh, ow, cout = spec.n, spec.out_h, spec.out_w, spec.cout
    hp, wp = spec.padded_hw
    k, s = spec.kernel, spec.stride
    base = _sums_base(spec)
    tile = largest_divisor_at_most(ow, tile)
    # window sums: vectors along the row at stride 1 (contiguous pixel sums)
    lanes = largest_divisor_at_most(ow, 16) if s == 1 else 1
    with IRBuilder() as builder:
        with T.prim_func():
            tables, weight, params, out = conv_arguments(
                spec, name, (tables_shape(spec), "uint8"),
                ((k, k, groups(spec) // 2, spec.w_bits, cout // BLOCK, VECTOR), "uint8"))
            sums = T.decl_buffer((base + _pixels(spec),), "uint16", data=tables.data)
            with T.parallel(0, n_ * oh) as row:
                n, y = row // oh, row % oh
                wsum = T.decl_buffer((ow,), "int32", scope="local")
                with T.serial(0, ow // lanes) as xo:
                    with T.vectorized(0, lanes) as xi:
                        x = xo * lanes + xi
                        total = None
                        for kh in range(k):
                            for kw in range(k):
                                pixel = (n * hp + y * s + kh) * wp + x * s + kw
                                term = sums[base + pixel].astype("int32")
                                total = term if total is None else total + term
                        T.buffer_store(wsum, total, [x])
                counts = T.decl_buffer((tile * spec.w_bits * VECTOR,), "uint8", scope="local")
                sums_ = T.decl_buffer((tile * BLOCK,), sum_dtype(spec), scope="local")
                with T.serial(0, cout // BLOCK) as block:
                    with T.serial(0, ow // tile) as step:
                        xs = [step * tile + t for t in range(tile)]
                        _accumulate(tables, weight, spec, n, y, xs, block, counts, sums_)
                        for t, x in enumerate(xs):
                            acc = sums_[tirx.Ramp(t * BLOCK, 1, BLOCK)]
                            store_outputs(spec, out, params, wsum, n, y, x, block * BLOCK,
                                          BLOCK, acc.astype(f"int32x{BLOCK}"))
    return builder.get()
