"""An honest popcount roofline: AND + popcount over L1-resident words, measured here.

A bit-serial kernel cannot beat a tight C loop that only loads two words, ANDs them
and counts bits, with the data in L1. We compile such loops with the system C compiler
(-O3 -march=native), time them, and report binary MACs per second (64 per word).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from mpqc.errors import BuildError

C_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* An empty asm with a memory clobber: the compiler must assume a and b changed, so it
   can neither hoist the pass out of the repeat loop nor fold the repeats together. */
#define BARRIER() __asm__ __volatile__("" ::: "memory")

/* n % 32 == 0. Four independent accumulators hide popcnt latency. On x86 keep it
   scalar (popcnt); on other hosts let the compiler vectorise (NEON cnt). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
uint64_t and_popcount_scalar(const uint64_t *a, const uint64_t *b, size_t n, size_t reps) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#if defined(__x86_64__) && defined(__clang__)
#pragma clang loop vectorize(disable)
#endif
    for (size_t r = 0; r < reps; r++) {
        for (size_t i = 0; i < n; i += 4) {
            c0 += (uint64_t)__builtin_popcountll(a[i] & b[i]);
            c1 += (uint64_t)__builtin_popcountll(a[i + 1] & b[i + 1]);
            c2 += (uint64_t)__builtin_popcountll(a[i + 2] & b[i + 2]);
            c3 += (uint64_t)__builtin_popcountll(a[i + 3] & b[i + 3]);
        }
        BARRIER();
    }
    return c0 + c1 + c2 + c3;
}

int has_avx2(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX2__
/* Nibble lookup: vpshufb counts the bits of each low and high nibble; byte counters
   grow by <= 8 per step and are flushed into 64-bit lanes with vpsadbw every 16 steps
   (<= 128 per byte, no overflow). Four independent 256-bit accumulators per step. */
static inline __m256i count_bytes(__m256i v, __m256i lut, __m256i low) {
    __m256i lo = _mm256_and_si256(v, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

#define STEP(k) _mm256_add_epi8(b##k, count_bytes(_mm256_and_si256( \
    _mm256_loadu_si256(pa + k), _mm256_loadu_si256(pb + k)), lut, low))

uint64_t and_popcount_avx2(const uint64_t *a, const uint64_t *b, size_t n, size_t reps) {
    const __m256i lut = _mm256_setr_epi8(0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4,
                                         0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i t0 = zero, t1 = zero, t2 = zero, t3 = zero;   /* 64-bit lane totals */
    size_t steps = n / 16;                                 /* 4 vectors of 4 words */
    for (size_t r = 0; r < reps; r++) {
        const __m256i *pa = (const __m256i *)a, *pb = (const __m256i *)b;
        for (size_t s = 0; s < steps; ) {
            size_t block = steps - s < 16 ? steps - s : 16;
            __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero;   /* byte counters */
            for (size_t j = 0; j < block; j++, pa += 4, pb += 4) {
                b0 = STEP(0); b1 = STEP(1); b2 = STEP(2); b3 = STEP(3);
            }
            s += block;
            t0 = _mm256_add_epi64(t0, _mm256_sad_epu8(b0, zero));
            t1 = _mm256_add_epi64(t1, _mm256_sad_epu8(b1, zero));
            t2 = _mm256_add_epi64(t2, _mm256_sad_epu8(b2, zero));
            t3 = _mm256_add_epi64(t3, _mm256_sad_epu8(b3, zero));
        }
        BARRIER();
    }
    __m256i t = _mm256_add_epi64(_mm256_add_epi64(t0, t1), _mm256_add_epi64(t2, t3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, t);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

int has_avx512_vpopcntdq(void) {
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
/* vpopcntq counts each 64-bit lane directly; four independent 512-bit accumulators
   (32 words per step) cover its latency. */
#define STEP512(k) _mm512_add_epi64(c##k, _mm512_popcnt_epi64(_mm512_and_si512( \
    _mm512_loadu_si512(a + i + 8 * k), _mm512_loadu_si512(b + i + 8 * k))))

uint64_t and_popcount_avx512(const uint64_t *a, const uint64_t *b, size_t n, size_t reps) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
    for (size_t r = 0; r < reps; r++) {
        for (size_t i = 0; i < n; i += 32) {
            c0 = STEP512(0); c1 = STEP512(1); c2 = STEP512(2); c3 = STEP512(3);
        }
        BARRIER();
    }
    return (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(c0, c1), _mm512_add_epi64(c2, c3)));
}
#endif
"""

WORDS = 512          # two arrays of 4 KiB each: L1-resident on every CPU we target
MIN_RUN_S = 0.05     # one timed run
RUNS = 7             # best of


@dataclass(frozen=True)
class Roofline:
    scalar_gbmacs: float         # x86: scalar popcnt; ARM64: compiler-vectorised (NEON cnt)
    avx2_gbmacs: float | None    # None where the host has no AVX2
    avx512_gbmacs: float | None  # AVX-512 VPOPCNTDQ; None where the host has none
    best_gbmacs: float
    cpu: str                     # llvm_get_system_cpu()
    compiler: str                # first line of `cc --version`


def find_compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise BuildError("no C compiler found (tried $CC, cc, gcc, clang): install gcc "
                     "(e.g. `apt-get install gcc`) to measure the popcount roofline")


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"C compiler {cc} does not run: {exc}") from exc
    return out.stdout.splitlines()[0].strip() if out.stdout else cc


def _cpu_identity() -> str:
    """What -march=native depends on: llvm's CPU name plus family/model/flags
    ("model name" alone reads "AMD EPYC" on both Zen1 and Zen3 hosts here)."""
    keys = ("vendor_id", "cpu family", "model", "flags", "Features", "CPU part")
    lines = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in keys and line not in lines:
                lines.append(line)
    except OSError:
        pass
    return "\n".join([host_cpu(), platform.machine()] + lines)


def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def cache_dir() -> Path:
    root = os.environ.get("MPQC_CACHE") or Path.home() / ".cache" / "mpqc"
    return Path(root) / "roofline"


@lru_cache(maxsize=None)
def load_library() -> ctypes.CDLL:
    """Compile C_SOURCE once per (source, compiler, CPU) and load it."""
    cc = find_compiler()
    version = _compiler_version(cc)
    key = hashlib.sha256("\0".join([C_SOURCE, cc, version, _cpu_identity()]).encode())
    path = cache_dir() / f"popcount_{key.hexdigest()[:16]}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src, out = Path(tmp) / "popcount.c", Path(tmp) / "popcount.so"
            src.write_text(C_SOURCE)
            cmd = [cc, "-O3", "-march=native", "-fPIC", "-shared", str(src), "-o", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise BuildError(f"compiling the roofline loop failed ({' '.join(cmd)}):\n"
                                 f"{res.stderr.strip()}")
            os.replace(out, path)  # atomic: a concurrent run sees all or nothing
    lib = ctypes.CDLL(str(path))
    u64p, size = ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t
    names = ["and_popcount_scalar"] + (["and_popcount_avx2"] if lib.has_avx2() else []) \
        + (["and_popcount_avx512"] if lib.has_avx512_vpopcntdq() else [])
    for name in names:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [u64p, u64p, size, size], ctypes.c_uint64
    return lib


def _variants(lib) -> dict:
    out = {"scalar": lib.and_popcount_scalar}
    if lib.has_avx2():
        out["avx2"] = lib.and_popcount_avx2
    if lib.has_avx512_vpopcntdq():
        out["avx512"] = lib.and_popcount_avx512
    return out


def popcount_and_total(a_words: np.ndarray, b_words: np.ndarray, variant: str = "best",
                       reps: int = 1) -> int:
    """sum(popcount(a & b)) over the words, `reps` times, by the C loop of `variant`
    ("scalar", "avx2", "avx512" or "best", the widest built): lets tests check the timed
    loops compute the right count."""
    fns = _variants(load_library())
    if variant == "best":
        variant = next(v for v in ("avx512", "avx2", "scalar") if v in fns)
    if variant not in fns:
        raise BuildError(f"roofline variant {variant!r} not built on this host "
                         f"(have {sorted(fns)})")
    a = np.ascontiguousarray(a_words, dtype=np.uint64).ravel()
    b = np.ascontiguousarray(b_words, dtype=np.uint64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"word arrays differ in size: {a.size} vs {b.size}")
    pad = -a.size % 32  # the loops take up to 32 words per step; zero words count nothing
    a, b = (np.concatenate([x, np.zeros(pad, np.uint64)]) for x in (a, b))
    u64p = ctypes.POINTER(ctypes.c_uint64)
    return int(fns[variant](a.ctypes.data_as(u64p), b.ctypes.data_as(u64p), a.size, reps))


def _gbmacs(fn, a: np.ndarray, b: np.ndarray) -> float:
    """Best-of-RUNS binary MAC/s (G) of one loop over the L1 arrays."""
    u64p = ctypes.POINTER(ctypes.c_uint64)
    pa, pb = a.ctypes.data_as(u64p), b.ctypes.data_as(u64p)
    reps = 1000
    while True:  # grow reps until one run lasts MIN_RUN_S (also warms caches/clocks)
        t0 = time.perf_counter()
        fn(pa, pb, a.size, reps)
        if time.perf_counter() - t0 >= MIN_RUN_S:
            break
        reps *= 2
    best = float("inf")
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn(pa, pb, a.size, reps)
        best = min(best, time.perf_counter() - t0)
    return a.size * reps * 64 / best / 1e9


def _cache_line_aligned(words: np.ndarray) -> np.ndarray:
    """A copy starting on a 64-byte boundary: numpy aligns to 16 bytes, and a 512-bit load
    that straddles two cache lines costs two (the roofline varied by 20% with it)."""
    raw = np.empty(words.size + 8, np.uint64)
    skip = (-raw.ctypes.data % 64) // 8
    out = raw[skip:skip + words.size]
    out[:] = words
    return out


def measure_roofline(words: int = WORDS, seed: int = 0) -> Roofline:
    """Time every loop variant built for this host; single thread."""
    lib = load_library()
    rng = np.random.default_rng(seed)  # filled at run time: nothing to constant-fold
    a, b = (_cache_line_aligned(rng.integers(0, 2**64 - 1, words, dtype=np.uint64,
                                             endpoint=True)) for _ in range(2))
    rates = {name: _gbmacs(fn, a, b) for name, fn in _variants(lib).items()}
    return Roofline(scalar_gbmacs=rates["scalar"], avx2_gbmacs=rates.get("avx2"),
                    avx512_gbmacs=rates.get("avx512"), best_gbmacs=max(rates.values()), cpu=host_cpu(),
                    compiler=_compiler_version(find_compiler()))


def faster(first: Roofline, second: Roofline) -> Roofline:
    """Two measurements of the same loops: the faster rate of each loop."""
    def best(x, y):
        return None if x is None and y is None else max(v for v in (x, y) if v is not None)
    return replace(first, scalar_gbmacs=max(first.scalar_gbmacs, second.scalar_gbmacs),
                   avx2_gbmacs=best(first.avx2_gbmacs, second.avx2_gbmacs),
                   avx512_gbmacs=best(first.avx512_gbmacs, second.avx512_gbmacs),
                   best_gbmacs=max(first.best_gbmacs, second.best_gbmacs))


def roofline_ms(macs: int, a: int, w: int, roofline: Roofline) -> float:
    """Floor time (ms) of an a-bit x w-bit layer of `macs` MACs at the roofline rate."""
    return a * w * macs / roofline.best_gbmacs / 1e6
