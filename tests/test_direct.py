"""The scheduled 8-bit first convolution + requantization vs its numpy reference."""
import numpy as np
import pytest
import tvm

from mpqc.schedules.build import compile_prim_func
from mpqc.schedules.direct import DirectConv, direct_conv_prim_func, direct_conv_reference
from mpqc.targets import load_target

HOST = load_target("host")


@pytest.mark.parametrize("geometry", [
    # (h, w, cin, cout, kernel, stride, padding, in_dtype, out_bits)
    (32, 32, 3, 16, 3, 1, 1, "int8", 2),     # ResNet-20's first conv
    (28, 28, 1, 8, 3, 1, 1, "int8", 4),      # democnn-like: one channel
    (15, 13, 3, 12, 3, 2, 1, "int8", 8),     # stride 2, odd sizes, 12 channels (no lane fit)
    (9, 9, 5, 7, 1, 1, 0, "uint8", 1),       # 1x1, unsigned codes, 7 channels
    (11, 10, 4, 24, 5, 2, 2, "int8", 3),     # 5x5 kernel
])
@pytest.mark.parametrize("lanes,mul_dtype", [(8, "int64"), (16, "int64"), (16, "int32")])
def test_direct_conv_exact(geometry, lanes, mul_dtype):
    h, w, cin, cout, k, s, p, dtype, bits = geometry
    rng = np.random.default_rng(h * 100 + cout)
    low, high = (-128, 128) if dtype == "int8" else (0, 256)
    codes = rng.integers(low, high, (1, h, w, cin)).astype(dtype)
    weights = rng.integers(-128, 128, (k, k, cin, cout)).astype(np.float32)
    # constants that spread the codes over the output range (not all clamped)
    conv = DirectConv(1, h, w, cin, cout, k, s, p, dtype, shift=24, out_bits=bits,
                      mul_dtype=mul_dtype)
    bound = 128 * 128 * k * k * cin
    mul = np.round(rng.uniform(0.5, 1.5, cout) * (1 << bits) / (2 * bound) * 8 * (1 << 24))
    add = np.full(cout, (1 << (bits - 1)) << 24, np.int64)
    mul = mul.astype(np.int64)
    expected = direct_conv_reference(codes, weights, mul, add, conv)
    assert len(np.unique(expected)) > 1, "constants clamp everything: the test would be vacuous"
    lib = compile_prim_func(direct_conv_prim_func(conv, lanes), HOST, "direct conv")
    dev = tvm.cpu()
    out = np.zeros(expected.shape, np.uint8)
    args = [tvm.runtime.tensor(a, dev)
            for a in (codes, weights, mul.astype(mul_dtype), add, out)]
    lib["main"](*args)
    np.testing.assert_array_equal(args[-1].numpy(), expected)


@pytest.mark.parametrize("geometry", [
    (32, 32, 3, 16, 3, 1, 1),   # ResNet-20's first conv
    (28, 28, 1, 8, 3, 1, 1),    # democnn-like: one channel
    (15, 13, 3, 12, 3, 2, 1),   # stride 2, odd sizes
])
def test_direct_conv_with_input_quantizer_exact(geometry):
    """The input quantizer fused into the padding: the float32 NCHW image in, the same
    codes as quantizing first (float32 divide, round half to even, clamp)."""
    h, w, cin, cout, k, s, p = geometry
    rng = np.random.default_rng(h + cin)
    step = np.float32(0.0213)
    images = rng.normal(0, 1.2, (1, cin, h, w)).astype(np.float32)
    # exact halves too: round half to even is part of the contract
    images.reshape(-1)[:8] = (np.arange(8, dtype=np.float32) - 3.5) * step
    codes = np.clip(np.round(images / step), -128, 127).astype(np.int8).transpose(0, 2, 3, 1)
    assert codes.min() == -128 and codes.max() == 127, "the clamp is not exercised"
    weights = rng.integers(-128, 128, (k, k, cin, cout)).astype(np.float32)
    conv = DirectConv(1, h, w, cin, cout, k, s, p, "int8", shift=24, out_bits=4,
                      quantize=(float(step), -128.0, 127.0))
    bound = 128 * 128 * k * k * cin
    mul = np.round(rng.uniform(0.5, 1.5, cout) * 16 / (2 * bound) * 8 * (1 << 24))
    mul = mul.astype(np.int64)
    add = np.full(cout, 8 << 24, np.int64)
    expected = direct_conv_reference(np.ascontiguousarray(codes), weights, mul, add, conv)
    assert len(np.unique(expected)) > 1, "constants clamp everything: the test would be vacuous"
    lib = compile_prim_func(direct_conv_prim_func(conv, 16), HOST, "direct conv")
    dev = tvm.cpu()
    out = np.zeros(expected.shape, np.uint8)
    args = [tvm.runtime.tensor(a, dev) for a in (images, weights, mul, add, out)]
    lib["main"](*args)
    np.testing.assert_array_equal(args[-1].numpy(), expected)
