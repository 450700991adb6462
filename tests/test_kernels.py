"""Bit-serial kernels on the host vs the numpy references: integer-exact, every bit pair."""
import itertools

import numpy as np
import pytest
import tvm

from mpqc.errors import ConfigError
from mpqc.schedules import ConvSpec, Epilogue, Knobs, dense_spec, pack_word_for
from mpqc.schedules import reference as ref
from mpqc.schedules import PACK_STYLES
from mpqc.schedules.build import (bitpack_prim_func, build_bitpack, build_conv,
                                  compile_prim_func, default_knobs, pack_style,
                                  packed_weights, reference_input)
from mpqc.targets import load_target

HOST = load_target("host")
DEV = tvm.cpu()
PAIRS = list(itertools.product(range(1, 9), range(1, 9)))
# (kernel, stride, padding, cin, word_bits): 3x3 and 1x1, stride 1 and 2, with and
# without padding, channel counts that are not multiples of the word
GEOMETRIES = [(3, 1, 1, 37, 32), (3, 2, 1, 16, 16), (1, 1, 0, 70, 64), (3, 2, 0, 9, 8)]


def random_codes(rng, spec):
    x = rng.integers(0, 1 << spec.a_bits, (spec.n, spec.h, spec.w, spec.cin), dtype=np.int64)
    if spec.w_bits == 1:
        w = rng.choice([-1, 1], (spec.kernel, spec.kernel, spec.cin, spec.cout))
    else:
        half = 1 << (spec.w_bits - 1)
        w = rng.integers(-half, half, (spec.kernel, spec.kernel, spec.cin, spec.cout))
    return x.astype(np.uint8), w


def spread_epilogue(rng, x, w, spec):
    """Integer requantization constants that spread the codes over the whole range."""
    acc = ref.conv_int(x, w, spec)
    levels, shift = 1 << spec.epilogue.out_bits, spec.epilogue.shift
    scale = levels / (4 * max(acc.std(), 1.0)) * rng.uniform(0.5, 1.5, spec.cout)
    mul = np.round(scale * (1 << shift)).astype(np.int32)
    add = np.round((levels / 2 - scale * acc.mean(axis=(0, 1, 2)) + 0.5) * (1 << shift))
    return mul, add.astype(np.int64)


def float_epilogue(rng, spec):
    mul = rng.uniform(0.01, 0.1, spec.cout).astype(np.float32)
    return mul, rng.normal(size=spec.cout).astype(np.float32)


def run_conv(spec, x, w, mul=None, add=None, residual=None, res_mul=None, knobs=None):
    knobs = knobs or default_knobs(HOST)
    lib = build_conv(spec, HOST, knobs)
    args = [reference_input(x, spec, knobs), packed_weights(w, spec, knobs)]
    if spec.epilogue.output != "int32":
        args += [mul, add] + ([residual] if spec.epilogue.residual else [])
        args += [res_mul] if res_mul is not None else []
    out = np.zeros((spec.n, spec.out_h, spec.out_w, spec.cout), spec.epilogue.out_dtype)
    tensors = [tvm.runtime.tensor(a, DEV) for a in [*args, out]]
    lib["main"](*tensors)
    return tensors[-1].numpy()


@pytest.mark.parametrize("a_bits,w_bits", PAIRS)
def test_conv_int32_every_pair_exact(a_bits, w_bits):
    rng = np.random.default_rng(a_bits * 10 + w_bits)
    for kernel, stride, padding, cin, word in GEOMETRIES:
        spec = ConvSpec(n=1, h=7, w=9, cin=cin, cout=12, kernel=kernel, stride=stride,
                        padding=padding, a_bits=a_bits, w_bits=w_bits, word_bits=word)
        x, w = random_codes(rng, spec)
        got = run_conv(spec, x, w)
        expected = ref.conv_int(x, w, spec)
        np.testing.assert_array_equal(got, expected, err_msg=spec.name)


@pytest.mark.parametrize("a_bits,w_bits,acc_dtype", [(4, 4, "int16"), (5, 4, "int32"), (1, 1, "int16")])
def test_narrow_accumulator_exact_at_its_bound(a_bits, w_bits, acc_dtype):
    """16 channels in 16-bit words accumulate in 16-bit lanes where the bound fits: every
    code at its maximum (every popcount bit set) must reach the bound without overflow."""
    spec = ConvSpec(1, 6, 6, 16, 16, 3, 1, 0, a_bits, w_bits, word_bits=16)
    assert spec.acc_dtype == acc_dtype
    assert spec.popcount_bound == ((1 << a_bits) - 1) * ((1 << w_bits) - 1) * 9 * 16
    x = np.full((1, 6, 6, 16), (1 << a_bits) - 1, np.uint8)
    w = np.full((3, 3, 16, 16), 1 if w_bits == 1 else (1 << (w_bits - 1)) - 1)
    np.testing.assert_array_equal(run_conv(spec, x, w), ref.conv_int(x, w, spec))


def test_padding_does_not_change_results():
    """Extreme codes at the border: padded pixels must count as code 0."""
    rng = np.random.default_rng(1)
    spec = ConvSpec(1, 5, 5, 19, 8, 3, 1, 1, 3, 4, word_bits=32)
    x = np.full((1, 5, 5, 19), 7, np.uint8)
    w = np.full((3, 3, 19, 8), -8)
    w[..., ::2] = 7
    np.testing.assert_array_equal(run_conv(spec, x, w), ref.conv_int(x, w, spec))
    # against a direct loop, independent of the reference's own padding
    got = run_conv(spec, x, w)
    direct = np.zeros_like(got, dtype=np.int64)
    for y, xx, co in itertools.product(range(5), range(5), range(8)):
        for kh, kw in itertools.product(range(3), range(3)):
            yy, xi = y + kh - 1, xx + kw - 1
            if 0 <= yy < 5 and 0 <= xi < 5:
                direct[0, y, xx, co] += int(x[0, yy, xi] @ w[kh, kw, :, co])
    np.testing.assert_array_equal(got, direct)
    assert rng is not None


@pytest.mark.parametrize("narrow", [False, True], ids=["int64", "int32"])
@pytest.mark.parametrize("a_bits,w_bits,out_bits,residual", [
    (1, 1, 1, False), (2, 2, 2, True), (3, 5, 4, True), (8, 8, 8, False), (4, 2, 3, True),
])
def test_epilogue_requantized_codes_exact(a_bits, w_bits, out_bits, residual, narrow):
    rng = np.random.default_rng(out_bits)
    spec = ConvSpec(2, 8, 8, 40, 24, 3, 1, 1, a_bits, w_bits, word_bits=64,
                    epilogue=Epilogue("codes", residual=residual, out_bits=out_bits, shift=20))
    x, w = random_codes(rng, spec)
    if narrow:  # the largest shift whose constants fit the int32 path
        bound = spec.int32_mul_bound
        for shift in range(20, 0, -1):
            spec = spec.with_(epilogue=Epilogue("codes", residual=residual, out_bits=out_bits,
                                                shift=shift, mul_bound=bound))
            mul, add = spread_epilogue(rng, x, w, spec)
            if np.abs(mul).max() <= bound and np.abs(add).max() <= 1 << 30:
                break
        assert spec.requant_dtype == "int32"
    else:
        mul, add = spread_epilogue(rng, x, w, spec)
        assert spec.requant_dtype == "int64"
    res = res_mul = None
    if residual:
        limit = spec.epilogue.mul_bound or (1 << 20)
        res = rng.integers(0, 1 << out_bits, (2, 8, 8, 24)).astype(np.uint8)
        res_mul = rng.integers(-limit, limit + 1, 24).astype(np.int32)
    got = run_conv(spec, x, w, mul, add, res, res_mul)
    expected = ref.bitserial_conv2d(x, w, spec, mul, add, res, res_mul)
    np.testing.assert_array_equal(got, expected)
    # the test means something only if the codes spread over the range
    assert len(np.unique(expected)) >= min(1 << out_bits, 4)


def test_int32_requantization_at_its_extremes():
    """Every code and weight at its extreme, constants at the promised bound: no overflow."""
    epilogue = Epilogue("codes", out_bits=8, shift=8, mul_bound=1)
    spec = ConvSpec(1, 3, 3, 64, 4, 3, 1, 1, 4, 3, word_bits=64, epilogue=epilogue)
    spec = spec.with_(epilogue=Epilogue("codes", out_bits=8, shift=8,
                                        mul_bound=spec.int32_mul_bound))
    assert spec.requant_dtype == "int32"
    x = np.full((1, 3, 3, 64), 15, np.uint8)
    w = np.full((3, 3, 64, 4), -4)
    w[..., 1::2] = 3
    bound = spec.int32_mul_bound
    mul = np.array([bound, -bound, bound, -bound], np.int32)
    add = np.array([1 << 30, 1 << 30, -(1 << 30), 0], np.int64)
    got = run_conv(spec, x, w, mul, add)
    np.testing.assert_array_equal(got, ref.bitserial_conv2d(x, w, spec, mul, add))
    with pytest.raises(ConfigError, match="promised bound"):
        ref.bitserial_conv2d(x, w, spec, mul * 2, add)


def test_requantization_rounds_half_up_and_clamps():
    spec = ConvSpec(1, 1, 1, 8, 4, 1, 1, 0, 1, 2, word_bits=8,
                    epilogue=Epilogue("codes", out_bits=2, shift=4))
    x = np.ones((1, 1, 1, 8), np.uint8)
    w = np.zeros((1, 1, 8, 4), int)
    w[0, 0, :3, :] = 1  # acc = 3 on every channel
    mul = np.array([8, 16, 16, -16], np.int32)   # 0.5, 1, 1, -1 in Q4
    add = np.array([8, 8, 8 + 16 * 5, 8], np.int64)  # +0.5 rounding; +5 for channel 2
    got = run_conv(spec, x, w, mul, add)
    # 1.5+0.5 -> 2; 3+0.5 -> 3; 8.5 -> clamp 3; -3+0.5 -> clamp 0
    assert got.ravel().tolist() == [2, 3, 3, 0]
    assert got.ravel().tolist() == ref.bitserial_conv2d(x, w, spec, mul, add).ravel().tolist()


@pytest.mark.parametrize("a_bits,w_bits", [(1, 1), (2, 3), (8, 8)])
def test_dense_exact(a_bits, w_bits):
    rng = np.random.default_rng(7)
    spec = dense_spec(3, 100, 10, a_bits, w_bits, epilogue=Epilogue("float32"))
    x = rng.integers(0, 1 << a_bits, (3, 100)).astype(np.uint8)
    w = (rng.choice([-1, 1], (100, 10)) if w_bits == 1
         else rng.integers(-(1 << (w_bits - 1)), 1 << (w_bits - 1), (100, 10)))
    mul, add = float_epilogue(rng, spec)
    got = run_conv(spec, x.reshape(3, 1, 1, 100), w.reshape(1, 1, 100, 10), mul, add)
    np.testing.assert_allclose(got.reshape(3, 10), ref.bitserial_dense(x, w, spec, mul, add),
                               rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("style", ["multiply", "movemask"])
@pytest.mark.parametrize("word", [8, 16, 32, 64])
@pytest.mark.parametrize("cin, a", [(21, 3), (64, 8), (16, 1), (3, 2), (136, 5), (48, 2),
                                    (32, 4), (128, 1)])
def test_bitpack_kernel_matches_reference(style, word, cin, a):
    """Channel counts that fill the words, fill whole bytes only, or neither; both packs
    (movemask falls back to multiply where the channels are not a multiple of 16)."""
    if style == "movemask" and HOST.schedule != "x86":
        pytest.skip("movemask packing is x86 only")
    rng = np.random.default_rng(word + cin)
    spec = ConvSpec(2, 5, 6, cin, 8, 3, 1, 1, a, 2, word_bits=word)
    x = rng.integers(0, 1 << a, (2, 5, 6, cin)).astype(np.uint8)
    expected = ref.pack_activations(x, spec)
    assert expected.shape == (2, 7, 8, a, spec.words)
    out = tvm.runtime.tensor(np.zeros_like(expected), DEV)
    lib = compile_prim_func(bitpack_prim_func(spec, "main", style), HOST, "bitpack")
    lib["main"](tvm.runtime.tensor(x, DEV), out)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_the_host_family_packs_with_its_style():
    spec = ConvSpec(1, 4, 4, 32, 8, 3, 1, 1, 2, 2, word_bits=32)
    x = np.random.default_rng(0).integers(0, 4, (1, 4, 4, 32)).astype(np.uint8)
    out = tvm.runtime.tensor(np.zeros((1, 6, 6, 2, 1), np.uint32), DEV)
    build_bitpack(spec, HOST)["main"](tvm.runtime.tensor(x, DEV), out)
    np.testing.assert_array_equal(out.numpy(), ref.pack_activations(x, spec))
    assert pack_style(HOST) == PACK_STYLES[HOST.schedule]


def test_pack_bits_layout():
    # channel k at bit k % word of word k // word, plane i holds bit i of the code
    codes = np.zeros((1, 1, 1, 20), np.uint8)
    codes[0, 0, 0, 17] = 0b10
    spec = ConvSpec(1, 1, 1, 20, 1, 1, 1, 0, 2, 1, word_bits=16)
    planes = ref.pack_activations(codes, spec)
    assert planes.shape == (1, 1, 1, 2, 2) and planes.dtype == np.uint16
    assert planes[0, 0, 0, 0].tolist() == [0, 0] and planes[0, 0, 0, 1].tolist() == [0, 1 << 1]


@pytest.mark.parametrize("knobs", [Knobs(tile_w=1, tile_co=1, unroll_bits=False, parallel=False),
                                   Knobs(tile_w=7, tile_co=16, reduction_order="bits_first")])
def test_knobs_do_not_change_results(knobs):
    rng = np.random.default_rng(3)
    spec = ConvSpec(1, 7, 7, 33, 32, 3, 1, 1, 2, 2, word_bits=64)
    x, w = random_codes(rng, spec)
    np.testing.assert_array_equal(run_conv(spec, x, w, knobs=knobs), ref.conv_int(x, w, spec))


def test_channel_tile_is_whole_vectors_where_it_can_be():
    from mpqc.schedules.knobs import channel_tile
    spec = ConvSpec(1, 6, 6, 40, 24, 3, 1, 1, 2, 1, word_bits=64)
    assert Knobs(tile_w=4, tile_co=16).fit(spec).tile_co == 8   # not 12: 1.5 vectors
    assert [channel_tile(c, 16) for c in (16, 24, 48, 10, 12, 7, 40)] == [16, 8, 16, 10, 12, 7, 8]
    assert channel_tile(24, 12) == 12   # a tile that divides (e.g. tuned) is kept
    x, w = random_codes(np.random.default_rng(5), spec)
    np.testing.assert_array_equal(run_conv(spec, x, w, knobs=Knobs(tile_w=4, tile_co=16)),
                                  ref.conv_int(x, w, spec))


def test_word_choice():
    assert [pack_word_for(c, 64) for c in (3, 8, 9, 16, 32, 33, 64, 512)] == [8, 8, 16, 16, 32, 64, 64, 64]
    assert pack_word_for(64, 32) == 32


@pytest.mark.parametrize("a_bits,w_bits", [(0, 2), (2, 9), (3, -1)])
def test_bits_out_of_range(a_bits, w_bits):
    with pytest.raises(ConfigError, match=f"a={a_bits}, w={w_bits}"):
        ConvSpec(1, 4, 4, 8, 8, 3, 1, 1, a_bits, w_bits)


def test_codes_out_of_range_rejected():
    spec = ConvSpec(1, 4, 4, 8, 8, 3, 1, 1, 2, 2)
    with pytest.raises(ConfigError, match="activation codes outside"):
        ref.pack_activations(np.full((1, 4, 4, 8), 4, np.uint8), spec)
    with pytest.raises(ConfigError, match="weight codes outside"):
        ref.pack_weights(np.full((3, 3, 8, 8), 2), spec)
    with pytest.raises(ConfigError, match="-1 or \\+1"):
        ref.pack_weights(np.zeros((3, 3, 8, 8), int), spec.with_(w_bits=1))


def test_contract_modules_do_not_import_tvm():
    """Torch-side code (quantizers) shares spec.py without pulling in TVM."""
    import subprocess
    import sys
    code = ("import sys, mpqc.schedules, mpqc.schedules.spec, mpqc.schedules.reference, "
            "mpqc.schedules.requant; assert 'tvm' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# the paired-lane kernel (paired_x86.py): 16-channel layers, both of its pairings
PAIRED = Knobs(paired_tile_w=4, paired_lanes=True)
TILED = Knobs(tile_w=4, tile_co=16, paired_lanes=False)
PAIRED_GEOMETRIES = [  # (h, w, cout, stride): pixel pairs need stride 1 and an even width
    (5, 8, 16, 1), (7, 9, 32, 2), (4, 6, 32, 1)]


@pytest.mark.parametrize("a_bits,w_bits", PAIRS)
def test_paired_lanes_every_pair_exact(a_bits, w_bits):
    """Every pair: exact where the paired kernel applies, the tiled kernel elsewhere."""
    rng = np.random.default_rng(100 + a_bits * 10 + w_bits)
    for h, w_, cout, stride in PAIRED_GEOMETRIES:
        spec = ConvSpec(1, h, w_, 16, cout, 3, stride, 1, a_bits, w_bits, word_bits=16)
        x, w = random_codes(rng, spec)
        expected = ref.conv_int(x, w, spec)
        np.testing.assert_array_equal(run_conv(spec, x, w, knobs=PAIRED), expected,
                                      err_msg=spec.name)
        assert PAIRED.fit(spec).paired_lanes == (
            spec.acc_dtype == "int16" and (a_bits in (2, 4) or (a_bits == 1 and stride == 1)))


@pytest.mark.parametrize("a_bits,w_bits", [(1, 1), (2, 3), (4, 4)])
def test_paired_lanes_other_tiles_exact(a_bits, w_bits):
    """One and two accumulator pairs per step (AVX2's default is one)."""
    rng = np.random.default_rng(200 + a_bits * 10 + w_bits)
    for tile in (1, 2):
        knobs = Knobs(paired_tile_w=tile, paired_lanes=True)
        for h, w_, cout, stride in PAIRED_GEOMETRIES:
            spec = ConvSpec(1, h, w_, 16, cout, 3, stride, 1, a_bits, w_bits, word_bits=16)
            x, w = random_codes(rng, spec)
            np.testing.assert_array_equal(run_conv(spec, x, w, knobs=knobs),
                                          ref.conv_int(x, w, spec), err_msg=f"{spec.name} {tile}")


# pairs up to 4 bits, and the 8-bit ends: where the 16-bit-lane kernels apply, the
# shifts that split between byte and 16-bit lanes (byte_lanes.py), the bounds they check
NARROW_PAIRS = [(a, w) for a in range(1, 5) for w in range(1, 5)] + [(8, 1), (1, 8), (5, 3)]


@pytest.mark.parametrize("a_bits,w_bits", NARROW_PAIRS)
def test_paired_lanes_in_byte_lanes_exact(a_bits, w_bits):
    rng = np.random.default_rng(300 + a_bits * 10 + w_bits)
    knobs = Knobs(paired_tile_w=1, paired_lanes=True, byte_counts=True)
    for h, w_, cout, stride in PAIRED_GEOMETRIES[:2]:
        spec = ConvSpec(1, h, w_, 16, cout, 3, stride, 1, a_bits, w_bits, word_bits=16)
        x, w = random_codes(rng, spec)
        np.testing.assert_array_equal(run_conv(spec, x, w, knobs=knobs),
                                      ref.conv_int(x, w, spec), err_msg=spec.name)


HALF_GEOMETRIES = [  # (h, w, cin, cout, stride, word): one and two words per pixel
    (5, 8, 32, 32, 1, 32), (7, 9, 37, 16, 2, 32), (5, 8, 16, 16, 1, 16), (7, 9, 16, 32, 2, 16)]


@pytest.mark.parametrize("a_bits,w_bits", NARROW_PAIRS)
def test_half_words_exact(a_bits, w_bits):
    rng = np.random.default_rng(400 + a_bits * 10 + w_bits)
    # AVX2's default tile (1) everywhere, and a tile of 4 on the two-word geometry
    runs = [(1, g) for g in HALF_GEOMETRIES] + [(4, HALF_GEOMETRIES[1])]
    for tile, (h, w_, cin, cout, stride, word) in runs:
        knobs = Knobs(paired_tile_w=tile, half_words=True)
        spec = ConvSpec(1, h, w_, cin, cout, 3, stride, 1, a_bits, w_bits, word_bits=word)
        x, w = random_codes(rng, spec)
        np.testing.assert_array_equal(run_conv(spec, x, w, knobs=knobs),
                                      ref.conv_int(x, w, spec), err_msg=f"{spec.name} {tile}")
        bound = 16 * 9 * spec.words * ((1 << a_bits) - 1) * ((1 << w_bits) - 1)
        assert knobs.fit(spec).half_words == (bound < 1 << 16)


def test_half_words_codes_epilogue_exact():
    rng = np.random.default_rng(11)
    spec = ConvSpec(1, 6, 8, 32, 32, 3, 1, 1, 2, 2, word_bits=32,
                    epilogue=Epilogue("codes", residual=True, out_bits=2, shift=12,
                                      mul_bound=1 << 14))
    knobs = Knobs(paired_tile_w=1, half_words=True)
    assert knobs.fit(spec).half_words
    x, w = random_codes(rng, spec)
    mul, add = spread_epilogue(rng, x, w, spec)
    mul = np.clip(mul, -(1 << 14), 1 << 14).astype(np.int32)
    res = rng.integers(0, 4, (1, 6, 8, 32)).astype(np.uint8)
    res_mul = rng.integers(-(1 << 14), (1 << 14) + 1, 32).astype(np.int32)
    expected = ref.bitserial_conv2d(x, w, spec, mul, add, res, res_mul)
    np.testing.assert_array_equal(run_conv(spec, x, w, mul, add, res, res_mul, knobs=knobs),
                                  expected)
    assert len(np.unique(expected)) >= 2


def test_default_knobs_of_the_two_x86_widths():
    from mpqc.schedules import x86
    avx2, avx512 = x86.default_knobs(256), x86.default_knobs(512)
    assert avx2.paired_lanes and avx2.byte_counts and avx2.half_words and avx2.paired_tile_w == 1
    assert avx2.lookup_from_a_bits == 2 and avx512.lookup_from_a_bits == 0
    assert avx512.paired_lanes and not avx512.half_words and avx512.paired_tile_w == 4
    # where no 16-bit-lane or lookup kernel applies, their knobs are not part of the identity
    spec = ConvSpec(1, 8, 8, 64, 64, 3, 1, 1, 1, 2, word_bits=64)
    assert avx2.fit(spec) == Knobs(tile_w=4, tile_co=8)
    # from 2 activation bits, the lookup-table kernel on AVX2
    assert avx2.fit(spec.with_(a_bits=2)) == Knobs(tile_w=4, tile_co=8, paired_tile_w=1,
                                                   lookup_from_a_bits=2)
    # 16-channel layers at 1 bit: paired where it applies, else half words on AVX2
    spec = ConvSpec(1, 8, 8, 16, 16, 3, 1, 1, 1, 2, word_bits=16)
    assert avx2.fit(spec).paired_lanes and not avx2.fit(spec).half_words
    assert avx2.fit(spec.with_(stride=2)).half_words
    assert avx512.fit(spec.with_(a_bits=2)).paired_lanes
    assert not avx512.fit(spec.with_(a_bits=3)).half_words
    # above 4 activation bits the lookup kernel does not apply
    assert avx2.fit(spec.with_(a_bits=5)).half_words


@pytest.mark.parametrize("a_bits,w_bits,out_bits,residual", [
    (1, 1, 1, True), (2, 2, 2, True), (4, 3, 4, True), (1, 2, 8, False), (2, 1, 1, False)])
def test_paired_lanes_codes_epilogue_exact(a_bits, w_bits, out_bits, residual):
    """Requantized codes (int32 and int64 fixed point), residual included."""
    rng = np.random.default_rng(out_bits)
    for narrow in (False, True):
        spec = ConvSpec(1, 6, 8, 16, 32, 3, 1, 1, a_bits, w_bits, word_bits=16,
                        epilogue=Epilogue("codes", residual=residual, out_bits=out_bits,
                                          shift=12 if narrow else 20,
                                          mul_bound=(1 << 14) if narrow else 0))
        assert PAIRED.fit(spec).paired_lanes
        assert spec.requant_dtype == ("int32" if narrow else "int64")
        x, w = random_codes(rng, spec)
        mul, add = spread_epilogue(rng, x, w, spec)
        mul = np.clip(mul, -(1 << 14), 1 << 14).astype(np.int32)
        res = res_mul = None
        if residual:
            res = rng.integers(0, 1 << out_bits, (1, 6, 8, 32)).astype(np.uint8)
            res_mul = rng.integers(-(1 << 14), (1 << 14) + 1, 32).astype(np.int32)
        got = run_conv(spec, x, w, mul, add, res, res_mul, knobs=PAIRED)
        expected = ref.bitserial_conv2d(x, w, spec, mul, add, res, res_mul)
        np.testing.assert_array_equal(got, expected, err_msg=f"{spec.name} narrow={narrow}")
        np.testing.assert_array_equal(run_conv(spec, x, w, mul, add, res, res_mul, knobs=TILED),
                                      expected)
        assert len(np.unique(expected)) >= min(1 << out_bits, 2)


def test_paired_lanes_float_epilogue_matches_tiled():
    rng = np.random.default_rng(7)
    spec = ConvSpec(1, 6, 8, 16, 16, 3, 1, 1, 2, 2, word_bits=16,
                    epilogue=Epilogue("float32", residual=True, relu=True))
    x, w = random_codes(rng, spec)
    mul, add = float_epilogue(rng, spec)
    res = rng.normal(size=(1, 6, 8, 16)).astype(np.float32)
    got = run_conv(spec, x, w, mul, add, res, knobs=PAIRED)
    expected = np.maximum(ref.conv_int(x, w, spec).astype(np.float32) * mul + add + res, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    assert (got == 0).any() and (got > 0).any()


def test_paired_lanes_where_they_apply():
    base = ConvSpec(1, 32, 32, 16, 16, 3, 1, 1, 1, 1, word_bits=16)
    assert PAIRED.fit(base).paired_lanes
    assert not PAIRED.fit(base.with_(a_bits=3)).paired_lanes          # odd planes
    assert not PAIRED.fit(base.with_(stride=2, cout=32)).paired_lanes  # 1 bit, stride 2
    assert PAIRED.fit(base.with_(stride=2, cout=32, a_bits=2)).paired_lanes
    assert not PAIRED.fit(base.with_(cout=24)).paired_lanes           # half a group
    assert not PAIRED.fit(base.with_(cin=32, word_bits=32)).paired_lanes
    assert not PAIRED.fit(base.with_(a_bits=4, w_bits=5)).paired_lanes  # int32 accumulators
    assert not TILED.fit(base).paired_lanes
