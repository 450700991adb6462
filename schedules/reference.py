"""Numpy references of the bit-serial operators: the ground truth the tests compare to.

They compute the integer contract of `spec.py` directly (integer convolution of the
codes), not through bit planes, so a packing bug cannot hide in both sides.
"""
from __future__ import annotations

import numpy as np

from mpqc.errors import ConfigError
from mpqc.schedules.spec import ConvSpec, Epilogue, weight_code_range, weight_offset


def word_dtype(word_bits: int) -> np.dtype:
    return np.dtype(f"uint{word_bits}")


def _check_codes(codes: np.ndarray, low: int, high: int, what: str) -> None:
    if codes.size and (codes.min() < low or codes.max() > high):
        raise ConfigError(f"{what} codes outside [{low}, {high}] "
                          f"(found {int(codes.min())}..{int(codes.max())})")


def pack_bits(codes: np.ndarray, bits: int, word_bits: int, axis: int) -> np.ndarray:
    """Bit planes of unsigned codes along `axis`: a new axis of `bits` planes is placed
    just before the packed axis, which becomes ceil(size / word_bits) words; channel k
    sits at bit k % word_bits of word k // word_bits; padded channels are zero."""
    codes = np.moveaxis(np.asarray(codes, dtype=np.int64), axis, -1)
    size = codes.shape[-1]
    words = -(-size // word_bits)
    padded = np.zeros(codes.shape[:-1] + (words * word_bits,), dtype=np.uint64)
    padded[..., :size] = codes
    planes = []
    for i in range(bits):
        bit = ((padded >> np.uint64(i)) & np.uint64(1)).reshape(codes.shape[:-1] + (words, word_bits))
        weights = np.uint64(1) << np.arange(word_bits, dtype=np.uint64)
        planes.append((bit * weights).sum(axis=-1, dtype=np.uint64))
    packed = np.stack(planes, axis=-2).astype(word_dtype(word_bits))  # (..., bits, words)
    return np.moveaxis(packed, (-2, -1), (axis, axis + 1))


def pack_activations(codes: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """NHWC a-bit codes -> zero-padded planes (N, H+2P, W+2P, A, words)."""
    _check_codes(codes, 0, (1 << spec.a_bits) - 1, f"{spec.name}: activation")
    p = spec.padding
    padded = np.pad(codes, ((0, 0), (p, p), (p, p), (0, 0)))
    return pack_bits(padded, spec.a_bits, spec.word_bits, axis=3)


def encode_weights(weights: np.ndarray, w_bits: int) -> np.ndarray:
    """Signed weight codes -> the unsigned stored codes u (w_signed = s*u - z)."""
    low, high = weight_code_range(w_bits)
    if w_bits == 1:
        if not np.isin(weights, (-1, 1)).all():
            raise ConfigError("1-bit weight codes must be -1 or +1")
    else:
        _check_codes(weights, low, high, f"{w_bits}-bit weight")
    s, z = weight_offset(w_bits)
    return ((np.asarray(weights, dtype=np.int64) + z) // s).astype(np.int64)


def pack_weights(weights: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Signed codes (KH, KW, Cin, Cout) -> planes (KH, KW, Wbits, words, Cout)."""
    stored = encode_weights(weights, spec.w_bits)
    packed = pack_bits(stored, spec.w_bits, spec.word_bits, axis=2)  # (KH,KW,W,words,Cout)
    return np.ascontiguousarray(packed)


def conv_int(codes: np.ndarray, weights: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The integer accumulator: NHWC codes conv (KH,KW,Cin,Cout) signed codes, int64."""
    p, s, k = spec.padding, spec.stride, spec.kernel
    x = np.pad(codes.astype(np.int64), ((0, 0), (p, p), (p, p), (0, 0)))
    w = weights.astype(np.int64)
    out = np.zeros((spec.n, spec.out_h, spec.out_w, spec.cout), dtype=np.int64)
    for kh in range(k):
        for kw in range(k):
            window = x[:, kh:kh + s * spec.out_h:s, kw:kw + s * spec.out_w:s, :]
            out += np.tensordot(window, w[kh, kw], axes=([3], [0]))
    return out


def _check_requant_bounds(epilogue: Epilogue, mul, add, res_mul) -> None:
    """The kernel trusts the promised bounds (it may compute in int32): hold callers to them."""
    if not epilogue.mul_bound:
        return
    for name, values in (("mul", mul), ("res_mul", res_mul)):
        if values is not None and np.abs(np.asarray(values, np.int64)).max() > epilogue.mul_bound:
            raise ConfigError(f"requantization {name} exceeds the promised bound "
                              f"{epilogue.mul_bound}")
    if np.abs(np.asarray(add, np.int64)).max() > 1 << 30:
        raise ConfigError("requantization add exceeds 2^30 (needed for int32 arithmetic)")


def apply_epilogue(acc: np.ndarray, epilogue: Epilogue, mul=None, add=None, residual=None,
                   res_mul=None):
    """The epilogue operation by operation as spec.py defines it."""
    if epilogue.output == "int32":
        return acc.astype(np.int32)
    if epilogue.output == "codes":
        _check_requant_bounds(epilogue, mul, add, res_mul)
        total = acc.astype(np.int64) * np.asarray(mul, dtype=np.int64)
        if epilogue.residual:
            total = total + residual.astype(np.int64) * np.asarray(res_mul, dtype=np.int64)
        q = (total + np.asarray(add, dtype=np.int64)) >> epilogue.shift
        return np.clip(q, 0, (1 << epilogue.out_bits) - 1).astype(np.uint8)
    v = acc.astype(np.float32) * np.asarray(mul, dtype=np.float32)
    v = v + np.asarray(add, dtype=np.float32)
    if epilogue.residual:
        v = v + np.asarray(residual, dtype=np.float32)
    if epilogue.relu:
        v = np.maximum(v, np.float32(0))
    return v


def bitserial_conv2d(codes, weights, spec: ConvSpec, mul=None, add=None, residual=None,
                     res_mul=None):
    """Reference of the whole fused operator: codes in, epilogue output out."""
    _check_codes(codes, 0, (1 << spec.a_bits) - 1, f"{spec.name}: activation")
    encode_weights(weights, spec.w_bits)  # validates the codes
    return apply_epilogue(conv_int(codes, weights, spec), spec.epilogue, mul, add, residual,
                          res_mul)


def bitserial_dense(codes, weights, spec: ConvSpec, mul=None, add=None):
    """Dense reference: codes (N, K), signed weights (K, OUT)."""
    out = bitserial_conv2d(codes.reshape(spec.n, 1, 1, -1), weights.reshape(1, 1, *weights.shape),
                           spec, mul, add)
    return out.reshape(spec.n, spec.cout)
