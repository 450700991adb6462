"""Glue records in the latency database: what a network costs besides its bit-serial
layers, measured on a compiled library (mpqc.latency.glue) and kept beside the layer
records as lines with "kind": "glue".

A glue line holds the uniform points it was measured at and the line fitted through
them (mpqc.latency.glue.network_fit): a network's prediction is kernel_scale x its
kernels + glue_ms. `mpqc fit` copies the target's glue into the latency model,
keyed by model spec, input shape and threads. A rerun skips what the file already holds
for (target, model, input shape, threads) with today's kernels.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from mpqc.errors import ConfigError, DataError, DeviceError
from mpqc.jsonl import append_jsonl, read_jsonl

KIND = "glue"


@dataclass(frozen=True)
class GlueRecord:
    target: str
    model: str
    input_shape: tuple[int, ...]           # (C, H, W)
    threads: int
    pairs: tuple[tuple[int, int], ...]     # uniform (a, w) points, smallest first
    library_ms: tuple[float, ...]          # the compiled library at each point (median)
    kernels_ms: tuple[float, ...]          # its bit-serial kernels at that point, timed then
    glue_ms: float                         # library = kernel_scale * kernels + glue_ms
    repeats: int = 0
    device: str = ""
    emulated: bool = False
    versions: dict = field(default_factory=dict)
    timestamp: float = 0.0
    kernel_scale: float = 1.0              # lines written before it was fitted: 1

    @property
    def point_glue_ms(self) -> tuple[float, ...]:
        return tuple(lib - k for lib, k in zip(self.library_ms, self.kernels_ms))

    @property
    def spread_ms(self) -> float:
        g = self.point_glue_ms
        return max(g) - min(g)

    @property
    def key(self) -> tuple:
        return glue_key(self.target, self.model, self.input_shape, self.threads)

    def to_json(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["input_shape"] = list(self.input_shape)
        row["pairs"] = [list(p) for p in self.pairs]
        row["library_ms"], row["kernels_ms"] = list(self.library_ms), list(self.kernels_ms)
        return {"kind": KIND, **row}

    @staticmethod
    def from_json(row: dict) -> "GlueRecord":
        row = {k: v for k, v in row.items() if k != "kind"}
        row["input_shape"] = tuple(row["input_shape"])
        row["pairs"] = tuple(tuple(p) for p in row["pairs"])
        row["library_ms"], row["kernels_ms"] = tuple(row["library_ms"]), tuple(row["kernels_ms"])
        return GlueRecord(**row)


def glue_key(target: str, model: str, input_shape, threads: int) -> tuple:
    return (target, model, tuple(int(d) for d in input_shape), int(threads))


def model_glue_key(model: str, input_shape, threads: int) -> str:
    """How a latency model files its glue (one target per model)."""
    return f"{model}|{'x'.join(str(int(d)) for d in input_shape)}|{int(threads)}"


def is_glue_row(row: dict) -> bool:
    return row.get("kind") == KIND


def read_glue(path: str | Path) -> list[GlueRecord]:
    """The glue lines of a latency database (layer records are read by read_db)."""
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        if not is_glue_row(row):
            continue
        try:
            out.append(GlueRecord.from_json(row))
        except (TypeError, KeyError, ValueError) as exc:
            raise DataError(f"latency database {path}: glue line {i} is malformed ({exc})") \
                from exc
    return out


def current_glue(records, target: str, allow_emulated: bool = False) -> dict[tuple, GlueRecord]:
    """The latest glue of each (target, model, shape, threads) measured with today's
    kernels on today's kind of library (mpqc.build.LIBRARY_FORMAT)."""
    from mpqc.build import LIBRARY_FORMAT
    from mpqc.schedules import SCHEDULE_VERSION
    out: dict[tuple, GlueRecord] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        if r.target == target and r.versions.get("schedules") == SCHEDULE_VERSION \
                and r.versions.get("library", 1) == LIBRARY_FORMAT \
                and (allow_emulated or not r.emulated):
            out[r.key] = r
    return out


def resolve_input_shape(model_spec: str, input_shape=None) -> tuple[int, int, int]:
    if input_shape:
        return tuple(int(d) for d in input_shape)
    from mpqc.models import BUILTIN_MODELS
    if model_spec in BUILTIN_MODELS:
        return tuple(BUILTIN_MODELS[model_spec].input_shape)
    raise ConfigError(f"model {model_spec!r} is not built in: give its input shape (C,H,W)")


def glue_pairs(a_bits, w_bits) -> tuple[tuple[int, int], ...]:
    """The two smallest and the largest uniform pair of the candidate bits: the small
    ones pin the glue (there the kernels are a small part of the library), the largest
    the kernels' slowdown in the network (glue.network_fit)."""
    a_sorted, w_sorted = sorted(set(a_bits)), sorted(set(w_bits))
    pairs = ((a_sorted[0], w_sorted[0]), (a_sorted[min(1, len(a_sorted) - 1)],
                                          w_sorted[min(1, len(w_sorted) - 1)]),
             (a_sorted[-1], w_sorted[-1]))
    return tuple(dict.fromkeys(pairs))


def measure_glue_record(model_spec: str, input_shape, target, threads: int, repeats: int,
                        db_path, pairs=None, device=None, weights: str | None = None,
                        layers=None) -> tuple[GlueRecord, bool]:
    """(record, measured now): the database's current glue for the network, else measure
    it (two network compiles and their kernels) and append it."""
    from mpqc.latency.records import now, package_versions

    shape = resolve_input_shape(model_spec, input_shape)
    key = glue_key(target.name, model_spec, shape, threads)
    have = current_glue(read_glue(db_path), target.name).get(key)
    if have is not None:
        return have, False
    if device is not None:
        raise DeviceError("glue is timed on this machine only (a library's time over RPC is "
                          "not taken: boards may be emulated); measure it on the board with "
                          "mpqc on it, or leave it out with --no-glue")
    pairs = tuple(tuple(p) for p in (pairs or ((1, 1), (2, 2), (4, 4))))
    if layers is None:
        from mpqc.importer import import_model
        layers = import_model(model_spec, weights, shape).layers
    from mpqc.latency.glue import measure_glue
    m = measure_glue(model_spec, layers, shape, target, threads, repeats, pairs, weights)
    record = GlueRecord(
        target=target.name, model=model_spec, input_shape=shape, threads=threads,
        pairs=tuple((p.a_bits, p.w_bits) for p in m.points),
        library_ms=tuple(p.library_ms for p in m.points),
        kernels_ms=tuple(p.kernels_ms for p in m.points), glue_ms=m.glue_ms,
        kernel_scale=m.kernel_scale,
        repeats=repeats, device=f"host:{socket.gethostname()}", emulated=False,
        versions=package_versions(), timestamp=now())
    append_jsonl(db_path, record.to_json())
    return record, True
