"""Sums of popcounts counted in byte lanes, widened to 16-bit lanes in chunks.

Without a vector popcount (AVX2), LLVM counts the bits of a byte vector with two nibble
lookups (`vpshufb`) and an add; wider lanes then need more steps to add the bytes up
(16 bits: shift, add, shift; 32 bits: unpacks, `vpsadbw`, pack). Shifted byte counts
add up in the byte lanes for as long as a byte cannot overflow, so the widening to
16-bit lanes runs once per chunk of terms instead of once per popcount.
"""
from __future__ import annotations

from tvm import tirx

BYTE_MAX = 255
BYTE_SHIFT = 4   # 8 << 4 = 128: the largest shifted count a byte holds


def _const(value: int, dtype: str, lanes: int):
    return tirx.Broadcast(tirx.const(value, dtype), lanes)


def widen_bytes(chunk, lanes16: int):
    """uint16 x lanes16: each 16-bit lane's two byte counts added."""
    v = tirx.reinterpret(f"uint16x{lanes16}", chunk)
    return (v & _const(0xFF, "uint16", lanes16)) + (v >> _const(8, "uint16", lanes16))


def popcount_sum_u16(terms, lanes16: int):
    """uint16 x lanes16: sum of popcount(value) << shift over `terms` (pairs of a
    uint16 x lanes16 value and a shift), each 16-bit lane's bits counted together.
    The caller bounds the sum per 16-bit lane under 2^16. A shift above BYTE_SHIFT is
    split: the rest applies to the widened chunk."""
    total = None
    chunk, chunk_max, chunk_rest = None, 0, 0

    def flush():
        wide = widen_bytes(chunk, lanes16)
        if chunk_rest:
            wide = wide << _const(chunk_rest, "uint16", lanes16)
        return wide if total is None else total + wide

    for value, shift in terms:
        rest = max(shift - BYTE_SHIFT, 0)
        in_byte = shift - rest
        if chunk is not None and (rest != chunk_rest or chunk_max + (8 << in_byte) > BYTE_MAX):
            total, chunk, chunk_max = flush(), None, 0
        chunk_rest = rest
        count = tirx.popcount(tirx.reinterpret(f"uint8x{2 * lanes16}", value))
        if in_byte:
            count = count << _const(in_byte, "uint8", 2 * lanes16)
        chunk = count if chunk is None else chunk + count
        chunk_max += 8 << in_byte
    return flush()
