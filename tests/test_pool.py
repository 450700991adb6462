"""The scheduled global average pooling + quantizer vs its numpy contract."""
import numpy as np
import pytest
import tvm

from mpqc.schedules.build import compile_prim_func
from mpqc.schedules.pool import PoolRequant, pool_requant_prim_func
from mpqc.targets import load_target

HOST = load_target("host")


def _reference(x, mul, add, residual, res_mul, pool: PoolRequant) -> np.ndarray:
    t = x.astype(np.int64) * mul + add
    if residual is not None:
        t = t + residual.astype(np.int64) * res_mul
    if pool.relu:
        t = np.maximum(t, 0)
    q = (t.sum(axis=(1, 2)) + (1 << (pool.shift - 1))) >> pool.shift
    return np.clip(q, 0, (1 << pool.out_bits) - 1).astype(np.uint8)


@pytest.mark.parametrize("in_dtype,residual,relu,shape", [
    ("int32", True, True, (1, 8, 8, 64)),    # ResNet-20's last block: acc + residual codes
    ("int32", False, False, (2, 7, 5, 12)),  # batch 2, odd sizes, no lane fit
    ("uint8", False, True, (1, 4, 4, 16)),   # pooled codes
])
def test_pool_requant_exact(in_dtype, residual, relu, shape):
    n, h, w, c = shape
    rng = np.random.default_rng(c)
    x = (rng.integers(-3000, 3000, shape) if in_dtype == "int32"
         else rng.integers(0, 256, shape)).astype(in_dtype)
    mul = rng.integers(-2000, 5000, c).astype(np.int64)
    add = rng.integers(-10 ** 6, 10 ** 6, c).astype(np.int64)
    res = rng.integers(0, 4, shape).astype(np.uint8) if residual else None
    res_mul = rng.integers(0, 9000, c).astype(np.int64) if residual else None
    pool = PoolRequant(n, h, w, c, in_dtype, residual, relu, shift=20, out_bits=8)
    expected = _reference(x, mul, add, res, res_mul, pool)
    assert 1 < len(np.unique(expected)), "constants clamp everything: the test would be vacuous"
    lib = compile_prim_func(pool_requant_prim_func(pool), HOST, "pool")
    dev = tvm.cpu()
    arrays = [x, mul, add] + ([res, res_mul] if residual else []) + [np.zeros((n, c), np.uint8)]
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib["main"](*args)
    np.testing.assert_array_equal(args[-1].numpy(), expected)
