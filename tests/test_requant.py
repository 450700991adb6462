import numpy as np
import pytest

from mpqc.errors import ConfigError
from mpqc.schedules import ConvSpec, Epilogue
from mpqc.schedules import reference as ref
from mpqc.schedules.requant import (MAX_CODE_ERROR, MIN_MUL_BITS, effective_bits,
                                    fixed_point_error, requant_epilogue)


def spec(a, w, cin=64):
    return ConvSpec(1, 6, 6, cin, 8, 3, 1, 1, a, w, epilogue=Epilogue("codes", out_bits=a))


def test_small_layers_get_int32_with_precision():
    s = spec(2, 2)
    ep, mul, add = requant_epilogue(s, np.linspace(0.001, 0.01, 8), np.linspace(-1, 1, 8))
    assert s.with_(epilogue=ep).requant_dtype == "int32"
    assert effective_bits(mul) >= MIN_MUL_BITS
    assert np.abs(mul).max() <= ep.mul_bound and np.abs(add).max() <= 1 << 30


def test_a_near_dead_channel_keeps_int32():
    """A channel whose scale is ~0 (dead after training, common in 1-bit layers) has a
    multiplier of few bits, but the output moves by as little as any other channel's: it
    once sent the whole layer to int64 (25-35% slower kernels than the latency model
    measured)."""
    s = spec(1, 1, cin=16)
    scale = np.full(8, 0.05)
    scale[3] = 1e-7
    offset = np.linspace(0, 0.5, 8)
    ep, mul, add = requant_epilogue(s, scale, offset)
    assert s.with_(epilogue=ep).requant_dtype == "int32"
    acc = np.arange(-s.acc_bound, s.acc_bound + 1).reshape(-1, 1, 1, 1) * np.ones((1, 1, 1, 8), int)
    fixed = (acc * mul.astype(np.int64) + add) / 2.0 ** ep.shift
    assert np.abs(fixed - (acc * scale + offset + 0.5)).max() <= MAX_CODE_ERROR


def test_wide_layers_fall_back_to_int64():
    s = spec(8, 8, cin=512)
    ep, mul, add = requant_epilogue(s, np.full(8, 1e-5), np.zeros(8))
    assert ep.mul_bound == 0 and s.with_(epilogue=ep).requant_dtype == "int64"
    assert effective_bits(mul) >= 20


@pytest.mark.parametrize("a,w", [(1, 1), (2, 3), (4, 4), (8, 8)])
def test_fixed_point_matches_float_rounding(a, w):
    """The integer result is the float rescale rounded, up to one code at ties."""
    s = spec(a, w)
    rng = np.random.default_rng(a * w)
    acc = rng.integers(-s.acc_bound, s.acc_bound + 1, (1, 6, 6, 8))
    scale = rng.uniform(0.5, 2, 8) * (1 << a) / s.acc_bound
    offset = rng.uniform(0, (1 << a) / 2, 8)
    ep, mul, add = requant_epilogue(s, scale, offset)
    got = ref.apply_epilogue(acc, ep, mul, add).astype(int)
    exact = np.clip(np.floor(acc * scale + offset + 0.5), 0, (1 << a) - 1)
    assert np.abs(got - exact).max() <= 1
    assert (got == exact).mean() > 0.99


def test_residual_scale_and_bad_scales():
    s = spec(2, 2)
    ep, mul, add, res_mul = requant_epilogue(s, np.full(8, 0.01), np.zeros(8),
                                             residual_scale=np.full(8, 0.5))
    assert ep.residual and res_mul.dtype == np.int32
    assert res_mul[0] == 2 ** (ep.shift - 1) and mul[0] == round(0.01 * 2 ** ep.shift)
    with pytest.raises(ConfigError, match="not finite"):
        requant_epilogue(s, np.full(8, np.nan), np.zeros(8))
