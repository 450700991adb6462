"""The scheduled codes -> codes requantization (a shortcut's codes for the layer reading
them) vs its contract, with constants from fixed_point.recode_constants."""
import numpy as np
import pytest
import tvm

from mpqc.lower.fixed_point import recode_constants
from mpqc.schedules.build import compile_prim_func
from mpqc.schedules.recode import Recode, recode_prim_func
from mpqc.targets import load_target

HOST = load_target("host")


def _reference(codes, mul, add, shift, out_bits):
    """lower/reference.py's requant, in int64."""
    q = (codes.astype(np.int64) * mul + add) >> shift
    return np.clip(q, 0, (1 << out_bits) - 1).astype(np.uint8)


@pytest.mark.parametrize("shape,out_bits,lanes", [
    ((1, 32, 32, 16), 2, 16),   # ResNet-20 layer1, AVX-512 lanes: one vector per pixel
    ((1, 16, 16, 32), 1, 8),    # layer2 on AVX2: channels split by the lanes
    ((2, 7, 5, 8), 3, 16),      # 8 channels: two pixels per vector (W odd: no grouping)
    ((1, 6, 6, 8), 4, 16),      # 8 channels, W even: two pixels per vector
    ((3, 64), 2, 16),           # (N, C)
])
def test_recode_exact(shape, out_bits, lanes):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    codes = rng.integers(0, 256, shape).astype(np.uint8)
    c = shape[-1]
    # an 8-bit step into a coarser one, per channel, as the lowering asks
    scale = rng.uniform(0.002, 0.05, c)
    consts = recode_constants(scale, np.zeros(c), "test")
    assert consts is not None and consts["int32"]
    mul, add, shift = consts["mul"], consts["add"], consts["shift"]
    assert 255 * np.abs(mul).max() + np.abs(add).max() < 2 ** 31
    expected = _reference(codes, mul, add, shift, out_bits)
    assert len(np.unique(expected)) > 1, "everything clamps: the test would be vacuous"
    # the fixed point rounds like the float it stands for, away from exact halves
    exact = codes * scale
    clear = np.abs(exact - np.floor(exact) - 0.5) > 1e-3
    float_q = np.clip(np.floor(exact + 0.5), 0, (1 << out_bits) - 1)
    np.testing.assert_array_equal(expected[clear], float_q[clear])
    lib = compile_prim_func(recode_prim_func(Recode(shape, shift, out_bits), lanes), HOST,
                            "recode")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in
            (codes, mul.astype(np.int32), add.astype(np.int32), np.zeros(shape, np.uint8))]
    lib["main"](*args)
    np.testing.assert_array_equal(args[-1].numpy(), expected)


def test_recode_constants_refuse_what_int32_cannot_hold():
    assert recode_constants(np.full(4, 3e7), np.zeros(4), "test") is None
