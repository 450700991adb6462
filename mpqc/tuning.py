"""Schedule tuning: measure knob choices of a bit-serial kernel, keep the best in a log.

The log is JSON lines, one record per measured (target, kernel, knobs), appended and
flushed at once, so a killed run loses at most the record in flight; a torn last line
is skipped on reading and a rerun measures only what is not in the log yet. Builds and
the latency measurement read the best knobs from the same log.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mpqc.errors import BuildError, ConfigError
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

    def to_json(self) -> dict:
        return {"schema": SCHEMA_VERSION, **self.__dict__}


def read_log(path: str | Path) -> list[TuningRecord]:
    """Every complete record of a log; a torn (partial) line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves at most one torn line
        row.pop("schema", None)
        try:
            records.append(TuningRecord(**row))
        except TypeError as exc:
            raise ConfigError(f"tuning log {path}: a line is not a tuning record ({exc})") from exc
    return records


def append_record(path: str | Path, record: TuningRecord) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if f.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            f.write("\n")  # end a torn line left by a killed run
        f.write(json.dumps(record.to_json()) + "\n")
        f.flush()
        os.fsync(f.fileno())


def best_knobs(path: str | Path | None, spec: ConvSpec, target) -> Knobs | None:
    """The fastest exact knobs measured for this kernel on this target, if any."""
    if path is None:
        return None
    key, tkey = kernel_key(spec), target_key(target)
    done = [r for r in read_log(path) if r.kernel == key and r.target_key == tkey
            and r.exact and r.median_ms is not None]
    return Knobs(**min(done, key=lambda r: r.median_ms).knobs) if done else None


def knob_space(max_trials: int | None = None) -> list[Knobs]:
    """The candidate knobs, most promising first (register-sized tiles)."""
    space = [Knobs(tile_w=tw, tile_co=tc, reduction_order=order, unroll_bits=unroll)
             for tc, tw, order, unroll in itertools.product(
                 (8, 16, 32), (4, 2, 7, 8, 1), ("window_first", "bits_first"), (True, False))]
    return space[:max_trials] if max_trials else space


def tune_conv(spec: ConvSpec, target, log_path: str | Path,
              candidates: Iterable[Knobs] | None = None, repeats: int = 10,
              progress: Callable[[Iterable], Iterable] = lambda it: it) -> TuningRecord | None:
    """Measure every candidate not yet in the log; return the best record of the log."""
    from mpqc.kernel_check import check_conv

    key, tkey = kernel_key(spec), target_key(target)
    seen = {json.dumps(r.knobs, sort_keys=True) for r in read_log(log_path)
            if r.kernel == key and r.target_key == tkey}
    todo, queued = [], set()
    for knobs in candidates or knob_space():
        fitted = json.dumps(knobs.fit(spec).to_json(), sort_keys=True)
        if fitted not in seen and fitted not in queued:  # tiles fitted to the layer collide
            queued.add(fitted)
            todo.append(knobs.fit(spec))
    for knobs in progress(todo):
        try:
            check = check_conv(spec, target, knobs, repeats=repeats)
            record = TuningRecord(target.name, tkey, key, knobs.to_json(), check.median_ms,
                                  check.exact, timestamp=time.time())
        except BuildError as exc:  # a knob the compiler rejects is a result, not a crash
            record = TuningRecord(target.name, tkey, key, knobs.to_json(), None, False,
                                  error=str(exc), timestamp=time.time())
        append_record(log_path, record)
    done = [r for r in read_log(log_path) if r.kernel == key and r.target_key == tkey
            and r.exact and r.median_ms is not None]
    return min(done, key=lambda r: r.median_ms) if done else None
