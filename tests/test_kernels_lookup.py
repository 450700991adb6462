"""The lookup-table kernel (schedules/lookup_x86.py) vs the numpy references."""
import itertools

import numpy as np
import pytest
import tvm

from mpqc.schedules import ConvSpec, Epilogue, Knobs
from mpqc.schedules import lookup_x86
from mpqc.schedules import reference as ref
from mpqc.schedules.build import compile_prim_func
from mpqc.schedules.knobs import lookup_tables_apply
from mpqc.targets import load_target
from tests.test_kernels import random_codes, run_conv, spread_epilogue

HOST = load_target("host")
LOOKUP = Knobs(paired_tile_w=1, lookup_from_a_bits=1)
# (h, w, cin, cout, stride, padding): 16 and 24 channels (a group pair and a half),
# stride 2, no padding, an odd width
GEOMETRIES = [(5, 8, 16, 16, 1, 1), (7, 9, 24, 32, 2, 1), (6, 7, 8, 16, 1, 0)]

pytestmark = pytest.mark.skipif(HOST.schedule != "x86",
                                reason="the lookup-table kernel is x86 code (AVX2 vpshufb)")


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_tables_equal_the_reference(geometry):
    h, w, cin, cout, stride, padding = geometry
    spec = ConvSpec(1, h, w, cin, cout, 3, stride, padding, 3, 2, word_bits=32)
    x, _ = random_codes(np.random.default_rng(1), spec)
    lib = compile_prim_func(lookup_x86.tables_prim_func(spec, "main"), HOST, "tables")
    out = tvm.runtime.tensor(np.full(lookup_x86.tables_shape(spec), 7, np.uint8))
    lib["main"](tvm.runtime.tensor(x), out)
    expected = lookup_x86.tables_reference(x, spec)
    np.testing.assert_array_equal(out.numpy(), expected)
    # spot checks of the layout against the definition: table of group g at pixel
    # (y, x) of the padded image, then the pixel sums as uint16
    hp, wp = h + 2 * padding, w + 2 * padding
    g, y, x_ = 1, padding + 1, padding + 2
    start = ((y * wp + x_) * (cin // 4) + g) * 16
    codes = x[0, 1, 2, 4 * g:4 * g + 4].astype(int)
    assert [int(v) for v in expected[start:start + 16]] == [
        sum(codes[c] for c in range(4) if v >> c & 1) for v in range(16)]
    sums = expected[hp * wp * cin * 4:].view("<u2").reshape(hp, wp)
    assert int(sums[y, x_]) == int(x[0, 1, 2].astype(int).sum())
    assert int(sums[0, 0]) == 0 or padding == 0


@pytest.mark.parametrize("a_bits,w_bits", list(itertools.product(range(1, 5), range(1, 9))))
def test_lookup_every_pair_exact(a_bits, w_bits):
    rng = np.random.default_rng(700 + 10 * a_bits + w_bits)
    for h, w_, cin, cout, stride, padding in GEOMETRIES[:2]:
        spec = ConvSpec(1, h, w_, cin, cout, 3, stride, padding, a_bits, w_bits, word_bits=32)
        assert lookup_tables_apply(spec) and LOOKUP.fit(spec).lookup_tables
        # 16-bit sums where every sum fits them, else 32-bit
        bound = ((1 << a_bits) - 1) * ((1 << w_bits) - 1) * 9 * cin
        assert lookup_x86.sum_dtype(spec) == ("uint16" if bound < 1 << 16 else "int32")
        x, w = random_codes(rng, spec)
        np.testing.assert_array_equal(run_conv(spec, x, w, knobs=LOOKUP),
                                      ref.conv_int(x, w, spec), err_msg=spec.name)


def test_lookup_at_the_sum_bound_and_tiles():
    """Every code at its maximum: the byte chunks and the 16-bit sums reach their
    bounds (the last two: 32-bit sums)."""
    for a_bits, w_bits, cin, tile in [(4, 4, 32, 2), (2, 7, 16, 4), (1, 1, 64, 1),
                                      (4, 4, 64, 1), (4, 8, 32, 2)]:
        spec = ConvSpec(1, 6, 6, cin, 16, 3, 1, 0, a_bits, w_bits, word_bits=32)
        assert lookup_tables_apply(spec)
        x = np.full((1, 6, 6, cin), (1 << a_bits) - 1, np.uint8)
        w = np.full((3, 3, cin, 16), 1 if w_bits == 1 else (1 << (w_bits - 1)) - 1)
        knobs = Knobs(paired_tile_w=tile, lookup_from_a_bits=1)
        np.testing.assert_array_equal(run_conv(spec, x, w, knobs=knobs),
                                      ref.conv_int(x, w, spec), err_msg=spec.name)


@pytest.mark.parametrize("out_bits,residual", [(2, True), (4, False)])
def test_lookup_codes_epilogue_exact(out_bits, residual):
    rng = np.random.default_rng(out_bits)
    spec = ConvSpec(1, 6, 8, 32, 32, 3, 1, 1, 2, 2, word_bits=32,
                    epilogue=Epilogue("codes", residual=residual, out_bits=out_bits, shift=12,
                                      mul_bound=1 << 14))
    x, w = random_codes(rng, spec)
    mul, add = spread_epilogue(rng, x, w, spec)
    mul = np.clip(mul, -(1 << 14), 1 << 14).astype(np.int32)
    res = rng.integers(0, 4, (1, 6, 8, 32)).astype(np.uint8) if residual else None
    res_mul = rng.integers(-(1 << 14), (1 << 14) + 1, 32).astype(np.int32) if residual else None
    expected = ref.bitserial_conv2d(x, w, spec, mul, add, res, res_mul)
    got = run_conv(spec, x, w, mul, add, res, res_mul, knobs=LOOKUP)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) >= 3


def test_lookup_dense_layer_exact():
    """A dense layer is a 1x1 convolution of a 1x1 image (spec.dense_spec)."""
    from mpqc.schedules import dense_spec
    rng = np.random.default_rng(9)
    spec = dense_spec(2, 64, 32, 3, 2, word_bits=64)
    x, w = random_codes(rng, spec)
    np.testing.assert_array_equal(run_conv(spec, x, w, knobs=LOOKUP), ref.conv_int(x, w, spec))


def test_lookup_float_epilogue():
    rng = np.random.default_rng(5)
    spec = ConvSpec(1, 5, 8, 16, 16, 3, 1, 1, 3, 1, word_bits=16,
                    epilogue=Epilogue("float32", relu=True))
    x, w = random_codes(rng, spec)
    mul = rng.uniform(0.01, 0.1, 16).astype(np.float32)
    add = rng.normal(size=16).astype(np.float32)
    expected = ref.bitserial_conv2d(x, w, spec, mul, add)
    np.testing.assert_allclose(run_conv(spec, x, w, mul, add, knobs=LOOKUP), expected,
                               rtol=1e-6, atol=1e-5)


def test_where_the_lookup_kernel_applies():
    base = ConvSpec(1, 8, 8, 16, 16, 3, 1, 1, 2, 2, word_bits=16)
    assert lookup_tables_apply(base)
    assert not lookup_tables_apply(base.with_(a_bits=5))          # a table byte overflows
    assert not lookup_tables_apply(base.with_(cin=12))            # half a group pair
    assert not lookup_tables_apply(base.with_(cout=24))           # not whole 16-channel blocks
    assert lookup_tables_apply(base.with_(cin=64, a_bits=4, w_bits=4))  # 32-bit sums
    knobs = Knobs(lookup_from_a_bits=2)
    assert knobs.fit(base).lookup_tables and not knobs.fit(base.with_(a_bits=1)).lookup_tables
    with pytest.raises(ValueError, match="lookup-table kernel"):
        lookup_x86.lookup_conv_prim_func(base.with_(a_bits=5), 1)
