"""Wall-clock timing of one call, the same way for every engine, and thread pinning.

Method (perf.md, "How the peer figures were taken"): warm up, then choose `number`
calls per sample so a sample lasts >= min_sample_ms (timer resolution and Python
overhead then vanish), take `repeats` samples, report the per-call median/min/max.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    number: int  # calls per sample

    @staticmethod
    def from_seconds(per_call_s: Sequence[float], number: int) -> "Timing":
        ms = [s * 1e3 for s in per_call_s]
        return Timing(statistics.median(ms), min(ms), max(ms), len(ms), number)


def time_callable(fn: Callable[[], object], warmup: int = 10, repeats: int = 30,
                  min_sample_ms: float = 20.0) -> Timing:
    """Per-call time of `fn()` (no arguments: bind them with a closure)."""
    for _ in range(max(warmup, 1)):
        fn()
    # calibrate on a few calls: one call alone is too noisy for a sub-ms kernel
    probe, t0 = 0, time.perf_counter()
    while probe < 3 or time.perf_counter() - t0 < 2e-3:
        fn()
        probe += 1
    per_call = (time.perf_counter() - t0) / probe
    number = max(1, math.ceil(min_sample_ms / 1e3 / per_call))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return Timing.from_seconds(samples, number)


def time_tvm(rt_mod, func_name: str, dev, args: Sequence, repeats: int = 30,
             min_repeat_ms: float = 20.0, warmup: int = 3) -> Timing:
    """Time a compiled TVM function with its own C++ timer (no Python in the loop).

    `rt_mod` is a runtime.Module or the Executable that tvm.compile returns. We pick
    `number` ourselves (rather than time_evaluator's min_repeat_ms, which hides it) so
    the Timing says how many calls each sample holds.
    """
    mod = getattr(rt_mod, "mod", rt_mod)
    probe = mod.time_evaluator(func_name, dev, number=1, repeat=max(warmup, 1))
    per_call = min(probe(*args).results)  # also the warm-up
    number = max(1, math.ceil(min_repeat_ms / 1e3 / max(per_call, 1e-9)))
    timer = mod.time_evaluator(func_name, dev, number=number, repeat=repeats)
    return Timing.from_seconds(list(timer(*args).results), number)


def _tvm_pool_size_hint(n: int) -> None:
    """TVM reads TVM_NUM_THREADS once, when its thread pool starts (first parallel call
    or runtime.NumThreads); it sizes the pool and caps later config_threadpool calls.
    Before that, ask for every core so set_threads can move up as well as down."""
    want = max(n, os.cpu_count() or 1)
    if int(os.environ.get("TVM_NUM_THREADS", "0") or 0) < want:
        os.environ["TVM_NUM_THREADS"] = str(want)


def set_threads(n: int) -> int:
    """Pin torch and the TVM runtime of this thread to `n` threads; return the TVM count.

    TVM 0.27 changes its pool at run time through the global function
    "runtime.config_threadpool"(mode, nthreads) (mode 1 = big cores, all cores on a
    homogeneous CPU); only up to the pool size fixed at start. onnxruntime takes its
    count per session (SessionOptions.intra_op_num_threads), not from here.
    """
    import torch
    import tvm

    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    _tvm_pool_size_hint(n)
    num_threads = tvm.get_global_func("runtime.NumThreads")
    num_threads()  # starts the pool now, with the size asked for above
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    os.environ["TVM_NUM_THREADS"] = str(n)  # what child processes (tuning workers) see
    return int(num_threads())


@contextmanager
def pinned_threads(n: int) -> Iterator[int]:
    """set_threads(n) for a block; restore torch's and TVM's previous counts after."""
    import torch
    import tvm

    old_torch = torch.get_num_threads()
    old_env = os.environ.get("TVM_NUM_THREADS")
    old_cpus = _affinity()
    _tvm_pool_size_hint(n)
    old_tvm = int(tvm.get_global_func("runtime.NumThreads")())
    try:
        yield set_threads(n)
    finally:
        torch.set_num_threads(old_torch)
        tvm.get_global_func("runtime.config_threadpool")(1, old_tvm)
        if old_env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old_env
        _restore_affinity(old_cpus)


def _affinity():
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _restore_affinity(cpus) -> None:
    """TVM's thread pool pins the calling thread (and the threads it starts after) to its
    cores; unpinned, a pipeline that measures and then trains would train on one core.
    Every thread of the process gets its mask back (Linux: a thread id is a pid here)."""
    if cpus is None:
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # a thread that ended meanwhile
