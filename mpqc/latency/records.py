"""The latency database: JSON lines, one measurement (or failure) per line.

A record says what ran (target, layer shape, bit pair, threads, schedule knobs), where
(host or RPC device, emulated or not), with which packages, and how long it took
(median/min/max over `repeats` samples). Records are appended and fsynced one at a time
(mpqc.jsonl), so a killed measurement run loses at most the record in flight, and a rerun
skips every (target, shape, a, w, threads) already in the file.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mpqc.errors import ConfigError, DataError
from mpqc.jsonl import append_jsonl, read_jsonl
from mpqc.schedules.spec import conv_out_size

SCHEMA_VERSION = 1
KINDS = ("conv2d", "dense")


@dataclass(frozen=True)
class LayerShape:
    """A bit-serial layer as the latency model sees it (batch 1, NHWC, square kernel)."""
    kind: str                 # "conv2d" | "dense" (dense: h = w = kernel = stride = 1)
    h: int
    w: int
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"layer kind {self.kind!r} is not one of {KINDS}")
        if min(self.h, self.w, self.cin, self.cout, self.kernel, self.stride) < 1 \
                or self.padding < 0:
            raise ConfigError(f"layer shape {self} has a non-positive size")

    @property
    def key(self) -> str:
        if self.kind == "dense":
            return f"dense_{self.cin}x{self.cout}"
        return (f"conv_{self.h}x{self.w}_c{self.cin}-{self.cout}_k{self.kernel}"
                f"s{self.stride}p{self.padding}")

    @property
    def out_hw(self) -> tuple[int, int]:
        return (conv_out_size(self.h, self.kernel, self.stride, self.padding),
                conv_out_size(self.w, self.kernel, self.stride, self.padding))

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return oh * ow * self.cout * self.cin * self.kernel * self.kernel

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(row: dict) -> "LayerShape":
        return LayerShape(**row)

    @staticmethod
    def from_layer(layer) -> "LayerShape":
        """From a mpqc.models.LayerInfo (square kernels, symmetric padding)."""
        if layer.kind == "linear":
            return LayerShape("dense", 1, 1, layer.in_channels, layer.out_channels)
        kh, kw = layer.kernel
        if kh != kw or layer.stride[0] != layer.stride[1] or layer.padding[0] != layer.padding[1]:
            raise ConfigError(f"layer {layer.name}: kernel {layer.kernel}, stride "
                              f"{layer.stride}, padding {layer.padding} are not square")
        return LayerShape("conv2d", layer.in_hw[0], layer.in_hw[1], layer.in_channels,
                          layer.out_channels, kh, layer.stride[0], layer.padding[0])


@dataclass(frozen=True)
class LatencyRecord:
    target: str
    target_tvm: dict
    shape: LayerShape
    a_bits: int
    w_bits: int
    threads: int
    median_ms: float | None          # bit-packing + convolution (what the network pays)
    min_ms: float | None = None
    max_ms: float | None = None
    repeats: int = 0
    conv_ms: float | None = None     # the convolution with its epilogue alone (median)
    pack_ms: float | None = None     # the activation bit-packing alone (median)
    word_bits: int = 0
    knobs: dict = field(default_factory=dict)
    device: str = ""                 # "host:<name>" or "rpc:<addr>:<port>"
    emulated: bool = False           # ran under an emulator: no timing value
    versions: dict = field(default_factory=dict)
    timestamp: float = 0.0
    error: str = ""                  # why the measurement failed ("" when it did not)

    @property
    def ok(self) -> bool:
        return not self.error and self.median_ms is not None

    @property
    def key(self) -> tuple:
        return job_key(self.target, self.shape, self.a_bits, self.w_bits, self.threads)

    def to_json(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["shape"] = self.shape.to_json()
        return {"schema": SCHEMA_VERSION, **row}

    @staticmethod
    def from_json(row: dict) -> "LatencyRecord":
        row = dict(row)
        row.pop("schema", None)
        row["shape"] = LayerShape.from_json(row["shape"])
        return LatencyRecord(**row)


def job_key(target: str, shape: LayerShape, a_bits: int, w_bits: int, threads: int) -> tuple:
    return (target, shape.key, a_bits, w_bits, threads)


def read_db(path: str | Path) -> list[LatencyRecord]:
    """Every complete layer record; a torn last line is skipped, a foreign line is an
    error. Glue lines (mpqc.latency.glue_db) share the file and are read by read_glue."""
    from mpqc.latency.glue_db import is_glue_row
    path = Path(path)
    records = []
    for i, row in enumerate(read_jsonl(path), 1):
        if is_glue_row(row):
            continue
        try:
            records.append(LatencyRecord.from_json(row))
        except (TypeError, KeyError, ConfigError) as exc:
            raise DataError(f"latency database {path}: record {i} is not a latency record "
                            f"({exc}); is this the file `mpqc measure --db` wrote?") from exc
    return records


def append_db(path: str | Path, record: LatencyRecord) -> None:
    append_jsonl(path, record.to_json())


def current(record: LatencyRecord) -> bool:
    """Measured with today's kernels (a schedule change makes older timings stale)."""
    from mpqc.schedules import SCHEDULE_VERSION
    return record.versions.get("schedules") == SCHEDULE_VERSION


def measured_keys(records: list[LatencyRecord]) -> set[tuple]:
    """Keys a rerun must not measure again: current successes (failures are retried)."""
    return set(measured_counts(records))


def measured_counts(records: list[LatencyRecord]) -> dict[tuple, int]:
    """Current successful measurements per key (a key measured in several passes)."""
    counts: dict[tuple, int] = {}
    for r in records:
        if r.ok and current(r):
            counts[r.key] = counts.get(r.key, 0) + 1
    return counts


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from mpqc.build import LIBRARY_FORMAT
    from mpqc.schedules import SCHEDULE_VERSION
    out = {"schedules": SCHEDULE_VERSION, "library": LIBRARY_FORMAT}
    for name in ("apache-tvm", "mpqc", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def now() -> float:
    return round(time.time(), 3)
