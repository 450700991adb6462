"""The latency model against compiled networks: for each configuration, build the
library, time it here (batch 1, median after warm-up, fastest of two passes) and
compare with the predicted network latency (its bit-serial layers plus the model's glue
for the network).

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
    kernel_scale: float = 1.0        # the kernels' slowdown in the network (glue.network_fit)

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
                "kernel_scale": self.kernel_scale,
                "mean_abs_error": sum(e) / len(e), "max_abs_error": max(e),
                "errors": self.errors, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms,
                ("exact_table" if not self.use_exact else "model_only"): {
                    "predicted_ms": self.table_predicted_ms,
                    "mean_abs_error": sum(other) / len(other), "max_abs_error": max(other)}}


def check_compiled(model, model_spec: str, layers, input_shape, configs: list[dict], target,
                   threads: int = 1, repeats: int = 20, use_exact: bool = False,
                   weights: str | None = None, progress=lambda i, measured, predicted: None,
                   passes: int = 2) -> CompiledCheck:
    """`model`: a LatencyModel; `layers`: the network's LayerInfo list; `configs`: full
    {layer: (a, w)} configurations. Builds one library per configuration, then times
    them all in `passes` rounds and keeps each one's fastest."""
    from mpqc.build.compile import compile_library
    from mpqc.build.network import NetworkSpec
    from mpqc.runtime import load
    from mpqc.targets import runs_on_host

    if not runs_on_host(target):
        raise DeviceError(f"target {target.name} does not run on this machine: compiled "
                          "libraries are timed here only")
    shape = tuple(input_shape)
    glue = model.glue_ms(model_spec, shape, threads)
    scale = model.kernel_scale(model_spec, shape, threads)
    shapes = {l.name: LayerShape.from_layer(l) for l in layers if l.quantizable}
    predicted, other = [], []
    with tempfile.TemporaryDirectory(prefix="mpqc-compiled-check-") as tmp:
        libraries = []
        for i, config in enumerate(configs):
            rows = [(shapes[n], a, w, threads) for n, (a, w) in config.items()]
            predicted.append(scale * float(model.predict_many(rows, use_exact=use_exact).sum())
                             + (glue or 0.0))
            other.append(scale * float(model.predict_many(rows, use_exact=not use_exact).sum())
                         + (glue or 0.0))
            path = Path(tmp) / f"config{i}.json"
            path.write_text(json.dumps({n: list(p) for n, p in config.items()}))
            spec = NetworkSpec(model=model_spec, weights=weights, config=str(path),
                               input_shape=shape)
            libraries.append(compile_library(spec, target, Path(tmp) / f"config{i}.so").library)
        # every library timed in each pass, passes one after another: as for the kernels
        # (mpqc measure --passes), the fastest pass is the one a slow spell spared
        measured = [float("inf")] * len(libraries)
        for _ in range(passes):
            for i, library in enumerate(libraries):
                measured[i] = min(measured[i], load(library).time(repeats=repeats,
                                                                  threads=threads).median_ms)
        for i in range(len(libraries)):
            progress(i, measured[i], predicted[i])
    return CompiledCheck(predicted, other, measured, glue, use_exact, scale)
