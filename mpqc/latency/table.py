"""The dense latency table the search reads: layers x activation bits x weight bits.

The search knows nothing of TVM; it receives this array (milliseconds, batch 1) and the
layer names, made from the latency model: measured entries exactly, the rest predicted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpqc.latency.records import LayerShape
from mpqc.schedules.spec import check_bits


@dataclass(frozen=True)
class LatencyTable:
    names: tuple[str, ...]
    a_bits: tuple[int, ...]
    w_bits: tuple[int, ...]
    ms: np.ndarray               # [layer, a index, w index]

    def lookup(self, name: str, a: int, w: int) -> float:
        return float(self.ms[self.names.index(name), self.a_bits.index(a), self.w_bits.index(w)])

    def total(self, config: dict[str, tuple[int, int]]) -> float:
        return sum(self.lookup(n, *config[n]) for n in self.names)


def build_table(model, layers, a_bits, w_bits, threads: int = 1) -> LatencyTable:
    """`model`: a LatencyModel; `layers`: LayerInfo list (only quantizable ones are used)."""
    for a in a_bits:
        for w in w_bits:
            check_bits(a, w, "latency table")
    chosen = [layer for layer in layers if layer.quantizable]
    rows = [(LayerShape.from_layer(layer), a, w, threads)
            for layer in chosen for a in a_bits for w in w_bits]
    ms = model.predict_many(rows).reshape(len(chosen), len(a_bits), len(w_bits))
    return LatencyTable(tuple(layer.name for layer in chosen), tuple(a_bits), tuple(w_bits), ms)


def latency_table(model_file: str | Path, layers, a_bits, w_bits, threads: int = 1):
    """(names, ndarray[L, len(a_bits), len(w_bits)] in ms) from a saved latency model."""
    from mpqc.latency.predictor import LatencyModel
    table = build_table(LatencyModel.load(model_file), layers, tuple(a_bits), tuple(w_bits),
                        threads)
    return list(table.names), table.ms
