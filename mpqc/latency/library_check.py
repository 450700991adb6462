"""The latency model against compiled networks: for each configuration, build the
library, time it here (batch 1, median after warm-up) and compare with the predicted
network latency (its bit-serial layers plus the model's glue for the network).

This is the figure a budget is about; the kernel-sum check (network.check_network)
leaves out everything the library does besides its kernels.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mpqc.errors import DeviceError
from mpqc.latency.records import LayerShape


@dataclass(frozen=True)
class CompiledCheck:
    predicted_ms: list[float]        # with the exact table as asked (use_exact)
    table_predicted_ms: list[float]  # the other way round, for comparison
    measured_ms: list[float]         # the compiled library
    glue_ms: float | None            # None: the model holds no glue for this network
    use_exact: bool

    @staticmethod
    def _errors(predicted, measured) -> list[float]:
        return [(p - m) / m for p, m in zip(predicted, measured)]

    @property
    def errors(self) -> list[float]:
        return self._errors(self.predicted_ms, self.measured_ms)

    def to_json(self) -> dict:
        e = [abs(x) for x in self.errors]
        other = [abs(x) for x in self._errors(self.table_predicted_ms, self.measured_ms)]
        return {"configs": len(e), "compiled": True, "use_exact": self.use_exact,
                "glue_ms": self.glue_ms, "glue_measured": self.glue_ms is not None,
                "mean_abs_error": sum(e) / len(e), "max_abs_error": max(e),
                "errors": self.errors, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms,
                ("exact_table" if not self.use_exact else "model_only"): {
                    "predicted_ms": self.table_predicted_ms,
                    "mean_abs_error": sum(other) / len(other), "max_abs_error": max(other)}}


def check_compiled(model, model_spec: str, layers, input_shape, configs: list[dict], target,
                   threads: int = 1, repeats: int = 20, use_exact: bool = False,
                   weights: str | None = None, progress=lambda i, measured, predicted: None
                   ) -> CompiledCheck:
    """`model`: a LatencyModel; `layers`: the network's LayerInfo list; `configs`: full
    {layer: (a, w)} configurations. Builds and times one library per configuration."""
    from mpqc.build.compile import compile_library
    from mpqc.build.network import NetworkSpec
    from mpqc.runtime import load
    from mpqc.targets import runs_on_host

    if not runs_on_host(target):
        raise DeviceError(f"target {target.name} does not run on this machine: compiled "
                          "libraries are timed here only")
    shape = tuple(input_shape)
    glue = model.glue_ms(model_spec, shape, threads)
    shapes = {l.name: LayerShape.from_layer(l) for l in layers if l.quantizable}
    predicted, other, measured = [], [], []
    with tempfile.TemporaryDirectory(prefix="mpqc-compiled-check-") as tmp:
        for i, config in enumerate(configs):
            rows = [(shapes[n], a, w, threads) for n, (a, w) in config.items()]
            predicted.append(float(model.predict_many(rows, use_exact=use_exact).sum())
                             + (glue or 0.0))
            other.append(float(model.predict_many(rows, use_exact=not use_exact).sum())
                         + (glue or 0.0))
            path = Path(tmp) / f"config{i}.json"
            path.write_text(json.dumps({n: list(p) for n, p in config.items()}))
            spec = NetworkSpec(model=model_spec, weights=weights, config=str(path),
                               input_shape=shape)
            built = compile_library(spec, target, Path(tmp) / f"config{i}.so")
            measured.append(load(built.library).time(repeats=repeats, threads=threads).median_ms)
            built.library.unlink()  # a ResNet library is megabytes; keep the tmp small
            progress(i, measured[-1], predicted[-1])
    return CompiledCheck(predicted, other, measured, glue, use_exact)
