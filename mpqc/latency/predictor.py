"""The latency model of one target: exact measurements first, XGBoost for the rest.

Prediction = base * exp(trees): `base` is a non-negative linear model of the layer's
exact work (popcounts, packed bits, outputs, one call) fitted to relative error; the
gradient-boosted trees learn log(measured / base) from the shape features, i.e. how
efficiently the kernel runs for that shape. Trees cannot extrapolate; the linear base
can, so shapes larger than any measured one still get a sensible figure.

A measured (shape, a, w, threads) always wins over a prediction (the exact table).
Quality is reported held out by layer shape: every record of a held-out shape is
unseen in training, as a new network's layers would be.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpqc.errors import ConfigError, DataError
from mpqc.latency.features import FEATURES, PARTS, analytic_terms, feature_matrix
from mpqc.latency.records import LatencyRecord, LayerShape

FORMAT = "mpqc-latency-model/2"
XGB_ROUNDS = 600
XGB_PARAMS = {"max_depth": 5, "eta": 0.04, "subsample": 0.85, "colsample_bytree": 0.9,
              "min_child_weight": 1.0, "lambda": 1.0, "objective": "reg:squarederror",
              "nthread": 1}


@dataclass
class PartModel:
    """base * exp(trees) for one kernel of the layer (conv or pack)."""
    part: str
    base_coef: list[float]
    booster: object  # xgboost.Booster

    def predict(self, rows, word_bits: int, tiles) -> np.ndarray:
        import xgboost as xgb
        base = np.maximum(analytic_terms(self.part, rows, word_bits, tiles)
                          @ np.array(self.base_coef), 1e-6)
        data = xgb.DMatrix(feature_matrix(self.part, rows, word_bits, tiles),
                           feature_names=list(FEATURES[self.part]))
        return base * np.exp(self.booster.predict(data))


@dataclass
class LatencyModel:
    target: str
    target_word_bits: int
    tiles: tuple[int, int]                       # default (tile_w, tile_co) of the target
    parts: dict[str, PartModel]
    exact: dict[str, float]                      # "shape|a|w|threads" -> median ms
    metrics: dict = field(default_factory=dict)
    glue: dict[str, float] = field(default_factory=dict)  # "model|CxHxW|threads" -> ms
    kernel_scales: dict[str, float] = field(default_factory=dict)  # same keys (glue.network_fit)

    @staticmethod
    def exact_key(shape: LayerShape, a: int, w: int, threads: int) -> str:
        return f"{shape.key}|{a}|{w}|{threads}"

    def predict_many(self, rows, use_exact: bool = True) -> np.ndarray:
        """rows: list of (LayerShape, a, w, threads) -> ms, exact where measured."""
        if not rows:
            return np.zeros(0)
        pred = sum(m.predict(rows, self.target_word_bits, self.tiles) for m in self.parts.values())
        if use_exact:
            for i, (s, a, w, t) in enumerate(rows):
                hit = self.exact.get(self.exact_key(s, a, w, t))
                if hit is not None:
                    pred[i] = hit
        return pred

    def predict(self, shape: LayerShape, a: int, w: int, threads: int = 1) -> float:
        return float(self.predict_many([(shape, a, w, threads)])[0])

    def glue_ms(self, model_spec: str, input_shape, threads: int = 1) -> float | None:
        """The measured glue of a network (None: never measured for this model file)."""
        from mpqc.latency.glue_db import model_glue_key
        return self.glue.get(model_glue_key(model_spec, input_shape, threads))

    def kernel_scale(self, model_spec: str, input_shape, threads: int = 1) -> float:
        """How much slower the network runs its kernels than they were timed alone
        (1: never measured)."""
        from mpqc.latency.glue_db import model_glue_key
        return self.kernel_scales.get(model_glue_key(model_spec, input_shape, threads), 1.0)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        trees = {}
        for part, m in self.parts.items():
            file = path.with_name(f"{path.stem}.{part}.ubj")
            m.booster.save_model(str(file))
            trees[part] = {"file": file.name, "base_coef": m.base_coef}
        meta = {"format": FORMAT, "target": self.target, "target_word_bits": self.target_word_bits,
                "tiles": list(self.tiles), "features": {k: list(v) for k, v in FEATURES.items()},
                "parts": trees, "exact": self.exact, "metrics": self.metrics,
                "glue": self.glue, "kernel_scales": self.kernel_scales}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(path)
        return path

    @staticmethod
    def load(path: str | Path) -> "LatencyModel":
        import xgboost as xgb
        path = Path(path)
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"latency model {path} does not exist; make it with `mpqc fit`") \
                from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"latency model {path} is not readable JSON ({exc}); refit it "
                            "with `mpqc fit`") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{path} is not an mpqc latency model (format {FORMAT}); refit "
                            "it with `mpqc fit`")
        if meta.get("features") != {k: list(v) for k, v in FEATURES.items()}:
            raise DataError(f"latency model {path} was fitted with other features; refit it")
        parts = {}
        for part, info in meta["parts"].items():
            booster = xgb.Booster()
            try:
                booster.load_model(str(path.parent / info["file"]))
            except Exception as exc:
                raise DataError(f"latency model {path}: its trees file {info['file']} is "
                                f"missing or corrupt ({exc}); refit with `mpqc fit`") from exc
            parts[part] = PartModel(part, info["base_coef"], booster)
        return LatencyModel(meta["target"], meta["target_word_bits"], tuple(meta["tiles"]),
                            parts, meta["exact"], meta.get("metrics", {}),
                            meta.get("glue", {}),  # files fitted before glue have none
                            meta.get("kernel_scales", {}))


def usable_records(records: list[LatencyRecord], target: str,
                   allow_emulated: bool = False) -> list[LatencyRecord]:
    """The target's successful measurements; emulated timings only when asked for."""
    from mpqc.latency.records import current
    mine = [r for r in records if r.target == target and r.ok and current(r)]
    if not mine:
        known = sorted({r.target for r in records if r.ok})
        raise DataError(f"no successful measurement of target {target!r} in the database"
                        + (f" (it holds {', '.join(known)})" if known else "")
                        + " with the current kernels; run `mpqc measure` first")
    real = [r for r in mine if not r.emulated]
    if allow_emulated:
        return mine
    if not real:
        raise DataError(f"every measurement of target {target!r} comes from an emulated "
                        "device, whose timings say nothing about the real CPU; pass "
                        "--allow-emulated to fit them anyway (e.g. to test the flow)")
    return real


def _rows(records):
    return [(r.shape, r.a_bits, r.w_bits, r.threads) for r in records]


def _fit_base(part: str, rows, ms: np.ndarray, word_bits: int, tiles) -> list[float]:
    """Non-negative least squares on relative error (rows scaled by 1/ms)."""
    scaled = analytic_terms(part, rows, word_bits, tiles) / ms[:, None]
    active = list(range(scaled.shape[1]))
    coef = np.zeros(scaled.shape[1])
    while active:  # drop negative coefficients one at a time (small active-set NNLS)
        sol, *_ = np.linalg.lstsq(scaled[:, active], np.ones(len(ms)), rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef.tolist()


def _fit_part(part: str, rows, ms: np.ndarray, word_bits: int, tiles, seed: int) -> PartModel:
    import xgboost as xgb
    coef = _fit_base(part, rows, ms, word_bits, tiles)
    base = np.maximum(analytic_terms(part, rows, word_bits, tiles) @ np.array(coef), 1e-6)
    data = xgb.DMatrix(feature_matrix(part, rows, word_bits, tiles), label=np.log(ms / base),
                       feature_names=list(FEATURES[part]))
    return PartModel(part, coef, xgb.train({**XGB_PARAMS, "seed": seed}, data,
                                           num_boost_round=XGB_ROUNDS))


def fastest_passes(records: list[LatencyRecord]) -> list[LatencyRecord]:
    """One record per kernel (target, shape, a, w, threads): the fastest of its passes. Interference
    on a shared machine only ever slows a kernel down, so the fastest pass is the one
    closest to what the kernel costs (and the one a rerun reproduces)."""
    best: dict[tuple, LatencyRecord] = {}
    for r in records:
        if r.key not in best or r.median_ms < best[r.key].median_ms:
            best[r.key] = r
    return list(best.values())


def _fit(records: list[LatencyRecord], word_bits: int, tiles, seed: int,
         target: str) -> LatencyModel:
    """records: one per kernel (fastest_passes)."""
    rows = _rows(records)
    parts = {}
    for part in PARTS:
        ms = np.array([getattr(r, f"{part}_ms") for r in records])
        parts[part] = _fit_part(part, rows, ms, word_bits, tiles, seed)
    exact = {LatencyModel.exact_key(r.shape, r.a_bits, r.w_bits, r.threads): r.median_ms
             for r in records}
    return LatencyModel(target, word_bits, tuple(tiles), parts, exact)


def heldout_split(records: list[LatencyRecord], fraction: float, seed: int):
    """(train, held-out) with every record of a held-out layer shape in held-out."""
    shapes = sorted({r.shape.key for r in records})
    if len(shapes) < 5:
        raise DataError(f"only {len(shapes)} distinct layer shapes measured; held-out "
                        "evaluation by shape needs at least 5 (measure more with "
                        "`mpqc measure --space random --count N`)")
    rng = random.Random(seed)
    rng.shuffle(shapes)
    held = set(shapes[:max(1, round(fraction * len(shapes)))])
    return ([r for r in records if r.shape.key not in held],
            [r for r in records if r.shape.key in held])


def error_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict:
    rel = np.abs(predicted - measured) / measured
    return {"within_10pct": float((rel <= 0.10).mean()), "within_5pct": float((rel <= 0.05).mean()),
            "mape": float(rel.mean()), "max_rel_error": float(rel.max())}


def fit_latency_model(records: list[LatencyRecord], target, heldout_fraction: float = 0.2,
                      seed: int = 0, allow_emulated: bool = False, glue=()) -> LatencyModel:
    """Evaluate held out by shape, then refit on everything for the returned model.
    `glue`: GlueRecords (mpqc.latency.glue_db.read_glue); the target's current ones are
    copied into the model as they are (glue is measured, not predicted)."""
    from mpqc.schedules.build import default_knobs

    passes = usable_records(records, target.name, allow_emulated)
    mine = fastest_passes(passes)
    word_bits = target.pack_word_bits
    knobs = default_knobs(target)
    tiles = (knobs.tile_w, knobs.tile_co)
    train, held = heldout_split(mine, heldout_fraction, seed)
    probe = _fit(train, word_bits, tiles, seed, target.name)
    measured = np.array([r.median_ms for r in held])
    scores = error_metrics(probe.predict_many(_rows(held), use_exact=False), measured)
    model = _fit(mine, word_bits, tiles, seed, target.name)
    model.metrics = {
        "target": target.name, "n_records": len(passes), "n_kernels": len(mine),
        "n_shapes": len({r.shape.key for r in mine}),
        "n_train": len(train), "n_heldout": len(held),
        "heldout_shapes": len({r.shape.key for r in held}),
        "heldout_within_10pct": scores["within_10pct"],
        "heldout_within_5pct": scores["within_5pct"],
        "heldout_mape": scores["mape"], "heldout_max_rel_error": scores["max_rel_error"],
        "emulated_records": sum(r.emulated for r in passes), "seed": seed,
        "base_coef": {k: m.base_coef for k, m in model.parts.items()},
    }
    model.glue = glue_table(glue, target.name, allow_emulated)
    model.kernel_scales = glue_table(glue, target.name, allow_emulated, "kernel_scale")
    model.metrics["glue_networks"] = len(model.glue)
    if not all(math.isfinite(v) for v in (scores["mape"],)):
        raise ConfigError("latency model evaluation produced a non-finite error")
    return model


def glue_table(glue_records, target: str, allow_emulated: bool = False,
               field_name: str = "glue_ms") -> dict[str, float]:
    from mpqc.latency.glue_db import current_glue, model_glue_key
    return {model_glue_key(r.model, r.input_shape, r.threads): getattr(r, field_name)
            for r in current_glue(glue_records, target, allow_emulated).values()}
