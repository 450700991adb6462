"""Schedule tuning: measure knob choices of a bit-serial kernel, keep the best in a log.

A kernel variant is a pack word (8/16/32/64 bits: it changes the data layout, so it is
part of the kernel) and schedule knobs; a layer's variants are compared on the time of
the activation bit-packing plus the convolution, as the network runs them.

The log is JSON lines, one record per measured (target, kernel, knobs), appended and
flushed at once, so a killed run loses at most the record in flight; a torn last line
is skipped on reading and a rerun measures only what is not in the log yet. Builds and
the latency measurement read the best knobs from the same log.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mpqc.errors import BuildError, ConfigError
from mpqc.jsonl import append_jsonl, read_jsonl
from mpqc.schedules import ConvSpec, Knobs

SCHEMA_VERSION = 1


def kernel_key(spec: ConvSpec) -> str:
    """What makes two kernels the same for tuning: shape, bits, word and epilogue."""
    ep = spec.epilogue
    return (f"{spec.name}_n{spec.n}_word{spec.word_bits}_{ep.output}"
            f"{'_res' if ep.residual else ''}{'_relu' if ep.relu else ''}")


def target_key(target) -> str:
    return json.dumps(target.tvm_target, sort_keys=True)


@dataclass(frozen=True)
class TuningRecord:
    target: str
    target_key: str
    kernel: str
    knobs: dict
    median_ms: float | None
    exact: bool
    error: str = ""
    timestamp: float = 0.0
    pack_ms: float = 0.0        # the activation bit-packing kernel of this word

    @property
    def total_ms(self) -> float:
        return self.median_ms + self.pack_ms

    def to_json(self) -> dict:
        return {"schema": SCHEMA_VERSION, **self.__dict__}


def read_log(path: str | Path) -> list[TuningRecord]:
    """Every complete record of a log; a torn (partial) line is skipped."""
    records = []
    for row in read_jsonl(path):
        row.pop("schema", None)
        try:
            records.append(TuningRecord(**row))
        except TypeError as exc:
            raise ConfigError(f"tuning log {path}: a line is not a tuning record ({exc})") from exc
    return records


def append_record(path: str | Path, record: TuningRecord) -> None:
    append_jsonl(path, record.to_json())


def best_knobs(path: str | Path | None, spec: ConvSpec, target) -> Knobs | None:
    """The fastest exact knobs measured for this kernel on this target, if any."""
    if path is None:
        return None
    key, tkey = kernel_key(spec), target_key(target)
    done = [r for r in read_log(path) if r.kernel == key and r.target_key == tkey
            and r.exact and r.median_ms is not None]
    return Knobs(**min(done, key=lambda r: r.median_ms).knobs) if done else None


def word_variants(spec: ConvSpec, target) -> list[ConvSpec]:
    """The layer packed into each word the target supports (8 bits up to its own)."""
    return [spec.with_(word_bits=w) for w in (8, 16, 32, 64) if w <= target.pack_word_bits]


def best_variant(path: str | Path | None, spec: ConvSpec, target):
    """(spec with the best word, its best knobs, total ms) measured in the log, or None."""
    if path is None:
        return None
    tkey = target_key(target)
    by_kernel = {kernel_key(v): v for v in word_variants(spec, target)}
    done = [r for r in read_log(path) if r.kernel in by_kernel and r.target_key == tkey
            and r.exact and r.median_ms is not None]
    if not done:
        return None
    best = min(done, key=lambda r: r.total_ms)
    return by_kernel[best.kernel], Knobs(**best.knobs), best.total_ms


def knob_space(max_trials: int | None = None, family: str = "x86") -> list[Knobs]:
    """The candidate knobs of a schedule family, most promising first (register-sized
    tiles)."""
    space = [Knobs(tile_w=tw, tile_co=tc, reduction_order=order, unroll_bits=unroll)
             for tc, tw, order, unroll in itertools.product(
                 (8, 16, 32), (4, 2, 7, 8, 1), ("window_first", "bits_first"), (True, False))]
    # the 16-bit-lane kernels (16- and 32-channel layers): their tile, popcounts in byte
    # or 16-bit lanes
    space[1:1] = [Knobs(paired_tile_w=tw, paired_lanes=True, half_words=True, byte_counts=b)
                  for tw, b in itertools.product((1, 4, 2, 8), (True, False))]
    # the lookup-table kernel (layers of at most 4 activation bits): its tile; x86 code
    # (vpshufb), which LLVM cannot select for another architecture
    if family == "x86":
        space[1:1] = [Knobs(paired_tile_w=tw, lookup_from_a_bits=1) for tw in (1, 2, 4)]
    return space[:max_trials] if max_trials else space


def tune_conv(spec: ConvSpec, target, log_path: str | Path,
              candidates: Iterable[Knobs] | None = None, repeats: int = 10,
              progress: Callable[[Iterable], Iterable] = lambda it: it) -> TuningRecord | None:
    """Measure every candidate not yet in the log; return the best record of the log."""
    from mpqc.kernel_check import check_conv, time_bitpack

    key, tkey = kernel_key(spec), target_key(target)
    seen = {json.dumps(r.knobs, sort_keys=True) for r in read_log(log_path)
            if r.kernel == key and r.target_key == tkey}
    todo, queued = [], set()
    for knobs in candidates or knob_space(family=target.schedule):
        fitted = json.dumps(knobs.fit(spec).to_json(), sort_keys=True)
        if fitted not in seen and fitted not in queued:  # tiles fitted to the layer collide
            queued.add(fitted)
            todo.append(knobs.fit(spec))
    pack_ms = {}   # the packing differs between the bit-plane and the lookup kernels
    for knobs in progress(todo):
        try:
            if knobs.lookup_tables not in pack_ms:
                pack_ms[knobs.lookup_tables] = time_bitpack(spec, target, repeats, knobs)
            check = check_conv(spec, target, knobs, repeats=repeats)
            record = TuningRecord(target.name, tkey, key, knobs.to_json(), check.median_ms,
                                  check.exact, timestamp=time.time(),
                                  pack_ms=pack_ms[knobs.lookup_tables])
        except BuildError as exc:  # a knob the compiler rejects is a result, not a crash
            record = TuningRecord(target.name, tkey, key, knobs.to_json(), None, False,
                                  error=str(exc), timestamp=time.time())
        append_record(log_path, record)
    done = [r for r in read_log(log_path) if r.kernel == key and r.target_key == tkey
            and r.exact and r.median_ms is not None]
    return min(done, key=lambda r: r.median_ms) if done else None


def tune_layer(spec: ConvSpec, target, log_path: str | Path,
               candidates: Iterable[Knobs] | None = None, repeats: int = 10,
               progress: Callable[[Iterable], Iterable] = lambda it: it):
    """Tune every word variant of a layer; returns best_variant of the log."""
    for variant in word_variants(spec, target):
        tune_conv(variant, target, log_path, candidates, repeats, progress)
    return best_variant(log_path, spec, target)
