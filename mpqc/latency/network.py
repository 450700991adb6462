"""Network-level latency: the sum of its bit-serial layers at their bit pairs, plus the
measured glue (8-bit first/last layers, pooling, residual adds) when known.

A bit configuration is {layer name: (a, w)}. It is read from `uniform:A,W`, from the JSON
that `mpqc search` writes (`layers: [{name, a, w}, ...]`) or from a plain JSON object
{name: [a, w]}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mpqc.errors import ConfigError
from mpqc.latency.records import LayerShape
from mpqc.schedules.spec import check_bits, check_config


@dataclass(frozen=True)
class LayerLatency:
    name: str
    a_bits: int
    w_bits: int
    ms: float
    measured: bool   # from the exact table rather than predicted


@dataclass(frozen=True)
class NetworkLatency:
    layers: tuple[LayerLatency, ...]   # each kernel as timed alone
    glue_ms: float
    threads: int
    kernel_scale: float = 1.0          # the kernels' slowdown in the network (glue.network_fit)

    @property
    def total_ms(self) -> float:
        return self.kernel_scale * sum(layer.ms for layer in self.layers) + self.glue_ms

    def to_json(self) -> dict:
        return {"total_ms": self.total_ms, "glue_ms": self.glue_ms,
                "kernel_scale": self.kernel_scale, "threads": self.threads,
                "layers": [layer.__dict__ for layer in self.layers]}


def parse_config(text: str, layers) -> dict[str, tuple[int, int]]:
    """A full configuration of the model's quantizable layers (names checked)."""
    names = [layer.name for layer in layers if layer.quantizable]
    if text.startswith("uniform:"):
        try:
            a, w = (int(x) for x in text.split(":", 1)[1].split(","))
        except ValueError:
            raise ConfigError(f"{text!r}: write uniform:A,W, e.g. uniform:2,2") from None
        check_bits(a, w, text)
        return {n: (a, w) for n in names}
    return check_config(config_file_pairs(text), names, text)


def config_file_pairs(text: str) -> dict[str, tuple[int, int]]:
    """The layer -> (a, w) pairs of a configuration file: a search result (its
    'layers') or a {layer: [a, w]} map. Layer names are not checked here."""
    path = Path(text)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration {text!r} is neither uniform:A,W nor an existing "
                          "JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not readable JSON ({exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("layers"), list):
        try:
            pairs = {row["name"]: (row["a"], row["w"]) for row in raw["layers"]}
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: every entry of 'layers' needs name, a and w") from None
    elif isinstance(raw, dict):
        try:
            pairs = {k: (v[0], v[1]) for k, v in raw.items()}
        except (TypeError, IndexError, KeyError):
            raise ConfigError(f"{path}: map each layer name to [a, w]") from None
    else:
        raise ConfigError(f"{path}: expected a JSON object")
    for name, (a, w) in pairs.items():
        check_bits(a, w, f"{path}: layer {name}")
    return pairs


def predict_network(model, layers, config: dict[str, tuple[int, int]], threads: int = 1,
                    glue_ms: float = 0.0, kernel_scale: float = 1.0) -> NetworkLatency:
    """`model`: a LatencyModel; `layers`: the model's LayerInfo list."""
    chosen = [layer for layer in layers if layer.quantizable]
    rows = [(LayerShape.from_layer(layer), *config[layer.name], threads) for layer in chosen]
    ms = model.predict_many(rows)
    out = []
    for layer, row, value in zip(chosen, rows, ms):
        measured = model.exact_key(*row) in model.exact
        out.append(LayerLatency(layer.name, row[1], row[2], float(value), measured))
    return NetworkLatency(tuple(out), glue_ms, threads, kernel_scale)


def random_configs(layers, a_bits, w_bits, count: int, seed: int = 0) -> list[dict]:
    """`count` random mixed configurations (a, w drawn per layer)."""
    import random
    rng = random.Random(seed)
    names = [layer.name for layer in layers if layer.quantizable]
    return [{n: (rng.choice(a_bits), rng.choice(w_bits)) for n in names} for _ in range(count)]


@dataclass(frozen=True)
class NetworkCheck:
    predicted_ms: list[float]
    measured_ms: list[float]

    @property
    def errors(self) -> list[float]:
        return [abs(p - m) / m for p, m in zip(self.predicted_ms, self.measured_ms)]

    def to_json(self) -> dict:
        e = self.errors
        return {"configs": len(e), "mean_abs_error": sum(e) / len(e), "max_abs_error": max(e),
                "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms}


def check_network(model, layers, configs: list[dict], target, db_path, threads: int = 1,
                  repeats: int = 20, use_exact: bool = False, progress=lambda r: None
                  ) -> NetworkCheck:
    """Predicted network latency against the sum of its kernels measured now.

    The kernels are measured into `db_path` (a fresh file gives a fresh measurement);
    with use_exact=False the prediction ignores the model's exact table, so the figure
    says how well the model predicts layers as if it had never measured them.
    """
    from mpqc.latency.measure import run_measurements
    from mpqc.latency.records import job_key, read_db
    from mpqc.latency.space import Job

    chosen = [layer for layer in layers if layer.quantizable]
    shapes = {layer.name: LayerShape.from_layer(layer) for layer in chosen}
    jobs = list({(shapes[n], a, w): Job(shapes[n], a, w)
                 for config in configs for n, (a, w) in config.items()}.values())
    run_measurements(jobs, db_path, target, threads=threads, repeats=repeats, progress=progress)
    measured = {r.key: r.median_ms for r in read_db(db_path) if r.ok}
    predicted, actual = [], []
    for config in configs:
        rows = [(shapes[n], a, w, threads) for n, (a, w) in config.items()]
        predicted.append(float(model.predict_many(rows, use_exact=use_exact).sum()))
        try:
            actual.append(sum(measured[job_key(target.name, s, a, w, t)] for s, a, w, t in rows))
        except KeyError as exc:
            raise ConfigError(f"a kernel of the network could not be measured ({exc}); see "
                              f"the error records in {db_path}") from None
    return NetworkCheck(predicted, actual)
