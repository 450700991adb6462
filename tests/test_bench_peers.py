"""mpqc.bench: timing sanity, the roofline loop's correctness, shapes, and each peer on a
tiny shape (fast: few repeats, short samples)."""
import os
import numpy as np
import pytest

from mpqc.bench import roofline as rl
from mpqc.bench import peers
from mpqc.bench.shapes import SHAPES, ConvShape, get_shape
from mpqc.bench.timing import Timing, pinned_threads, set_threads, time_callable
from mpqc.errors import BuildError, ConfigError

TINY = ConvShape("tiny", 8, 8, 16, 16, kernel=3, stride=1, padding=1)
FAST = dict(repeats=5)


def _sane(t: Timing, repeats: int = 5):
    assert isinstance(t, Timing)
    assert 0 < t.min_ms <= t.median_ms <= t.max_ms
    assert t.repeats == repeats and t.number >= 1


def test_time_callable_sane():
    t = time_callable(lambda: sum(range(1000)), warmup=2, repeats=5, min_sample_ms=1.0)
    _sane(t)
    assert t.median_ms < 1.0  # a thousand-term sum, per call, not per sample


def test_set_threads_and_restore(monkeypatch):
    import torch

    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # undone after the test
    before = torch.get_num_threads()
    with pinned_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def c_lib(tmp_path_factory):
    """The roofline library built into a throwaway cache (not the user's ~/.cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MPQC_CACHE", str(tmp_path_factory.mktemp("cache")))
    rl.load_library.cache_clear()
    try:
        yield rl.load_library()
    except BuildError as exc:
        pytest.skip(f"no usable C compiler: {exc}")
    finally:
        rl.load_library.cache_clear()
        mp.undo()


def _variants(lib):
    return ["scalar"] + (["avx2"] if lib.has_avx2() else []) \
        + (["avx512"] if lib.has_avx512_vpopcntdq() else [])


@pytest.mark.parametrize("n", [16, 1000, 4099])
def test_popcount_loop_matches_numpy(c_lib, n):
    rng = np.random.default_rng(n)
    a, b = (rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True) for _ in range(2))
    want = int(np.unpackbits((a & b).view(np.uint8)).sum())
    for variant in _variants(c_lib):
        assert rl.popcount_and_total(a, b, variant) == want, variant
        # the repeat loop really repeats (the barrier keeps it from being folded wrongly)
        assert rl.popcount_and_total(a, b, variant, reps=3) == 3 * want, variant


def test_popcount_loop_all_ones_no_byte_overflow(c_lib):
    ones = np.full(4096, 2**64 - 1, np.uint64)  # every byte counter at its maximum
    for variant in _variants(c_lib):
        assert rl.popcount_and_total(ones, ones, variant) == 4096 * 64, variant


def test_roofline_plausible(c_lib):
    roof = rl.measure_roofline()
    assert roof.scalar_gbmacs > 1.0
    assert roof.best_gbmacs == max(roof.scalar_gbmacs, roof.avx2_gbmacs or 0.0,
                                   roof.avx512_gbmacs or 0.0)
    assert (roof.avx2_gbmacs is not None) == bool(c_lib.has_avx2())
    assert (roof.avx512_gbmacs is not None) == bool(c_lib.has_avx512_vpopcntdq())
    assert roof.cpu and roof.compiler
    # 1 G MACs at a1w1 take 1000/best ms
    assert rl.roofline_ms(10**9, 1, 1, roof) == pytest.approx(1e3 / roof.best_gbmacs)
    assert rl.roofline_ms(10**9, 2, 2, roof) == pytest.approx(4e3 / roof.best_gbmacs)


def test_no_compiler_is_build_error(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(BuildError, match="no C compiler"):
        rl.find_compiler()


def test_shapes():
    s = get_shape("resnet18.layer1")
    assert (s.h, s.cin, s.cout, s.kernel, s.stride, s.padding) == (56, 64, 64, 3, 1, 1)
    assert s.macs == 56 * 56 * 64 * 64 * 9
    down = get_shape("resnet20.layer3.down")
    assert (down.out_h, down.cout, down.stride) == (8, 64, 2)
    assert len(SHAPES) == 9


def test_get_shape_unknown_lists_names():
    with pytest.raises(ConfigError, match="resnet18.layer1"):
        get_shape("resnet18.layer9")
    with pytest.raises(ConfigError):
        ConvShape("bad", 2, 2, 4, 4, kernel=5)


@pytest.mark.parametrize("peer", [peers.torch_fp32, peers.ort_fp32, peers.ort_int8])
def test_float_and_int8_peers_run(peer):
    _sane(peer(TINY, 1, min_sample_ms=1.0, **FAST))


def test_topi_bitserial_peer_runs():
    _sane(peers.tvm_topi_bitserial(TINY, 1, 1, 1, min_repeat_ms=1.0, **FAST))


@pytest.mark.parametrize("shape,a,w", [(TINY, 2, 2),
                                       (ConvShape("tiny.down", 8, 8, 16, 32, 3, 2, 1), 1, 2)])
def test_topi_bitserial_computes_the_conv(shape, a, w):
    import tvm

    exe, (x, k, out) = peers.topi_bitserial_module(shape, a, w)
    dev = tvm.cpu()
    got = tvm.runtime.tensor(out, dev)
    exe["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(k, dev), got)
    p = shape.padding
    xp = np.pad(x.astype(np.int64), ((0, 0), (p, p), (p, p), (0, 0)))
    want = np.zeros((1, shape.out_h, shape.out_w, shape.cout), np.int64)
    for i in range(shape.kernel):
        for j in range(shape.kernel):
            win = xp[:, i:i + shape.stride * shape.out_h:shape.stride,
                     j:j + shape.stride * shape.out_w:shape.stride, :]
            want += win @ k[i, j].astype(np.int64)
    np.testing.assert_array_equal(got.numpy(), want)


def test_pack_word_needs_channels_multiple_of_8():
    assert peers.pack_word_dtype(64) == "uint64" and peers.pack_word_dtype(16) == "uint16"
    with pytest.raises(ConfigError):
        peers.pack_word_dtype(12)


def test_the_faster_of_two_roofline_measurements_is_kept():
    slow = rl.Roofline(scalar_gbmacs=100.0, avx2_gbmacs=150.0, avx512_gbmacs=None,
                       best_gbmacs=150.0, cpu="x", compiler="cc")
    fast = rl.Roofline(scalar_gbmacs=90.0, avx2_gbmacs=200.0, avx512_gbmacs=None,
                       best_gbmacs=200.0, cpu="x", compiler="cc")
    both = rl.faster(slow, fast)
    assert (both.scalar_gbmacs, both.avx2_gbmacs, both.avx512_gbmacs, both.best_gbmacs) == \
        (100.0, 200.0, None, 200.0)
    assert rl.faster(fast, slow) == both


def test_roofline_words_start_on_a_cache_line():
    words = np.arange(1, 100, dtype=np.uint64)
    aligned = rl._cache_line_aligned(words)
    assert aligned.ctypes.data % 64 == 0
    np.testing.assert_array_equal(aligned, words)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux thread affinity and at least 2 CPUs")
def test_pinned_threads_give_every_thread_its_cpus_back():
    """TVM's pool pins the caller while it times; training after measuring must not stay
    on one core (a pipeline's search ran on one of two cores before this was restored)."""
    import numpy as np
    import tvm

    from mpqc.bench.timing import pinned_threads, time_tvm
    from mpqc.schedules.build import build_bitpack
    from mpqc.schedules.spec import ConvSpec
    from mpqc.targets import load_target

    spec = ConvSpec(1, 8, 8, 32, 8, 3, 1, 1, 2, 2, word_bits=32)
    lib, dev = build_bitpack(spec, load_target("host")), tvm.cpu()
    args = [tvm.runtime.tensor(np.zeros((1, 8, 8, 32), np.uint8), dev),
            tvm.runtime.tensor(np.zeros((1, 10, 10, 2, 1), np.uint32), dev)]
    before = os.sched_getaffinity(0)
    with pinned_threads(1):
        time_tvm(lib, "main", dev, args, repeats=3)
    for tid in os.listdir("/proc/self/task"):
        assert os.sched_getaffinity(int(tid)) == before, f"thread {tid} left pinned"
