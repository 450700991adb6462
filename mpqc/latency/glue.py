"""The latency of what is not bit-serial in a network (8-bit first and last layers,
pooling, residual adds, requantisation, the VM's own calls): "glue".

Measured from the compiled library's time and the time of its bit-serial kernels, both
timed on this machine one right after the other, at uniform bit pairs (the two smallest
and the largest). A network's prediction is kernel_scale x its kernels + glue, fitted
over those points (network_fit): glue barely depends on the bits (the kernels carry
their epilogues), but the kernels themselves run a few percent slower in the network
than alone.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mpqc.errors import ConfigError, DataError


@dataclass(frozen=True)
class GluePoint:
    a_bits: int
    w_bits: int
    library_ms: float
    kernels_ms: float

    @property
    def glue_ms(self) -> float:
        return self.library_ms - self.kernels_ms


@dataclass(frozen=True)
class GlueMeasurement:
    model: str
    target: str
    threads: int
    points: tuple[GluePoint, ...]
    timestamp: float

    @property
    def kernel_scale(self) -> float:
        return network_fit(self.points)[0]

    @property
    def glue_ms(self) -> float:
        return network_fit(self.points)[1]

    def to_json(self) -> dict:
        return {"model": self.model, "target": self.target, "threads": self.threads,
                "glue_ms": self.glue_ms, "kernel_scale": self.kernel_scale,
                "timestamp": self.timestamp,
                "points": [{**asdict(p), "glue_ms": p.glue_ms} for p in self.points]}


MAX_KERNEL_SCALE = 1.25


def network_fit(points) -> tuple[float, float]:
    """(kernel_scale, glue_ms) with library = kernel_scale * kernels + glue_ms, least
    squares over the uniform points. In a network the kernels run slower than timed
    alone (the previous layer's output and the weights are not hot in cache as in a
    repeated timing), by a few percent that grows with the kernels, so glue alone
    under-predicts large configurations. One point, or points too close to tell a
    slope, give scale 1. The scale is kept in [1, MAX_KERNEL_SCALE] and glue >= 0, so
    noise cannot make a prediction cheaper than its kernels."""
    ks = [p.kernels_ms for p in points]
    libs = [p.library_ms for p in points]
    n = len(points)
    k_mean, l_mean = sum(ks) / n, sum(libs) / n
    var = sum((k - k_mean) ** 2 for k in ks)
    scale = 1.0
    if n >= 2 and var > (0.05 * k_mean) ** 2:
        cov = sum((k - k_mean) * (lib - l_mean) for k, lib in zip(ks, libs))
        scale = min(max(cov / var, 1.0), MAX_KERNEL_SCALE)
    return scale, max(0.0, l_mean - scale * k_mean)


def kernels_ms(records, layers, target: str, a: int, w: int, threads: int) -> float:
    """Sum of the measured kernels (database medians, the fastest pass of each) of the
    model's searched layers."""
    from mpqc.latency.predictor import fastest_passes
    from mpqc.latency.records import LayerShape, current, job_key
    measured = {r.key: r.median_ms
                for r in fastest_passes([r for r in records if r.ok and current(r)])}
    total = 0.0
    for layer in layers:
        if not layer.quantizable:
            continue
        key = job_key(target, LayerShape.from_layer(layer), a, w, threads)
        if key not in measured:
            raise DataError(f"layer {layer.name} at a={a}, w={w} is not in the latency "
                            "database: measure the model's layers first")
        total += measured[key]
    return total


def measure_glue(model_spec: str, layers, input_shape, target, threads: int = 1,
                 repeats: int = 30, pairs=((1, 1), (2, 2), (4, 4)), weights: str | None = None
                 ) -> GlueMeasurement:
    """Compile the network at each uniform pair, time it here, subtract its kernels."""
    from mpqc.build.compile import compile_library
    from mpqc.build.network import NetworkSpec
    from mpqc.latency.measure import run_measurements
    from mpqc.latency.records import read_db
    from mpqc.latency.space import model_jobs
    from mpqc.runtime import load
    from mpqc.targets import runs_on_host

    if not runs_on_host(target):
        raise ConfigError(f"glue is timed on this machine; target {target.name} does not run "
                          "here")
    libraries, fastest, kernels = {}, {}, {}

    def time_library(pair):
        ms = libraries[pair].time(repeats=repeats, threads=threads).median_ms
        fastest[pair] = min(fastest.get(pair, ms), ms)

    with tempfile.TemporaryDirectory(prefix="mpqc-glue-") as tmp:
        for a, w in pairs:
            spec = NetworkSpec(model=model_spec, weights=weights, config=f"uniform:{a},{w}",
                               input_shape=tuple(input_shape))
            built = compile_library(spec, target, Path(tmp) / f"glue-{a}x{w}.so")
            libraries[(a, w)] = load(built.library)
            # its kernels timed now, not taken from the database: on a shared machine
            # minutes apart can differ more than the glue itself; the kernels keep the
            # fastest of two passes, the library the fastest of three timings minutes
            # apart (seen: a slow spell spoiled two timings of one library by +26%)
            time_library((a, w))
            db = Path(tmp) / f"kernels-{a}x{w}.jsonl"
            summary = run_measurements(model_jobs(layers, (a,), (w,)), db, target,
                                       threads=threads, repeats=repeats, passes=2)
            if summary.failed:
                raise DataError(f"timing the kernels of {model_spec} at a={a}, w={w} failed: "
                                f"{summary.failed[0].error}")
            time_library((a, w))
            kernels[(a, w)] = kernels_ms(read_db(db), layers, target.name, a, w, threads)
        for pair in pairs:   # a last round, after every pair's kernels
            time_library(pair)
    points = [GluePoint(a, w, fastest[(a, w)], kernels[(a, w)]) for a, w in pairs]
    return GlueMeasurement(model_spec, target.name, threads, tuple(points), time.time())


def read_glue_ms(path) -> float:
    try:
        return float(json.loads(Path(path).read_text())["glue_ms"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"glue file {path} is not readable ({exc}); rerun the measure step") \
            from exc
