"""The latency predictor: learns a shape-dependent speed from records, is judged on
unseen shapes, prefers measurements, refuses emulated timings, saves and loads."""
import math

import numpy as np
import pytest

from mpqc.errors import DataError
from mpqc.latency.features import _counts
from mpqc.latency.network import parse_config, predict_network
from mpqc.latency.predictor import LatencyModel, fit_latency_model
from mpqc.latency.records import LatencyRecord, LayerShape, package_versions
from mpqc.latency.space import random_shapes
from mpqc.latency.table import build_table, latency_table
from mpqc.targets import load_target
from mpqc.errors import ConfigError

TARGET = load_target("x86-avx2")


def synthetic_ms(shape, a, w):
    """A made-up CPU: popcount speed depends on the register tile the shape allows."""
    c = _counts(shape, a, w, 64, (4, 8))
    efficiency = (c["tile_w"] / 4) ** 0.5 * (0.6 + 0.4 * c["lane_use"])
    conv = 2e-7 * c["popcounts"] / efficiency + 3e-8 * c["outputs"] + 5e-4
    pack = 2e-7 * c["pack_bits"] * (1.5 if c["word_bits"] == 32 else 1.0) + 3e-4
    return conv, pack


def synthetic_records(n=300, seed=0, emulated=False, noise=0.01):
    rng = np.random.default_rng(seed)
    out = []
    for i, shape in enumerate(random_shapes(n, seed)):
        a, w = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        conv, pack = (x * (1 + noise * rng.standard_normal()) for x in synthetic_ms(shape, a, w))
        out.append(LatencyRecord(target=TARGET.name, target_tvm=dict(TARGET.tvm_target), shape=shape,
                                 a_bits=a, w_bits=w, threads=1, median_ms=conv + pack,
                                 min_ms=conv + pack, max_ms=conv + pack, repeats=10, conv_ms=conv,
                                 pack_ms=pack, versions=package_versions(), emulated=emulated))
    return out


@pytest.fixture(scope="module")
def model():
    return fit_latency_model(synthetic_records(), TARGET)


def test_heldout_by_shape_is_accurate_on_a_learnable_cpu(model):
    m = model.metrics
    assert m["n_train"] + m["n_heldout"] == 300 and m["heldout_shapes"] == 60
    assert m["heldout_within_10pct"] >= 0.9, m
    assert m["heldout_mape"] < 0.06, m
    # fresh shapes the model never saw, predicted without the exact table
    fresh = synthetic_records(100, seed=7, noise=0.0)
    pred = model.predict_many([(r.shape, r.a_bits, r.w_bits, 1) for r in fresh], use_exact=False)
    rel = np.abs(pred - [r.median_ms for r in fresh]) / [r.median_ms for r in fresh]
    assert (rel <= 0.10).mean() >= 0.85


def test_the_fit_keeps_the_fastest_pass_of_a_kernel():
    from dataclasses import replace

    from mpqc.latency.predictor import fastest_passes
    records = synthetic_records(40)
    slow = [replace(r, median_ms=r.median_ms * 1.3, conv_ms=r.conv_ms * 1.3,
                    pack_ms=r.pack_ms * 1.3) for r in records[:10]]  # a slow spell
    kept = fastest_passes(slow + records)
    assert len(kept) == 40 and sorted(r.median_ms for r in kept) == sorted(
        r.median_ms for r in records)
    m = fit_latency_model(slow + records, TARGET)
    assert (m.metrics["n_records"], m.metrics["n_kernels"]) == (50, 40)
    r = records[3]
    assert m.predict(r.shape, r.a_bits, r.w_bits) == pytest.approx(r.median_ms)


def test_a_measurement_wins_over_the_prediction(model):
    r = synthetic_records()[5]
    assert model.predict(r.shape, r.a_bits, r.w_bits) == pytest.approx(r.median_ms)
    assert model.predict_many([(r.shape, r.a_bits, r.w_bits, 1)], use_exact=False)[0] != r.median_ms


def test_save_and_load_predict_the_same(model, tmp_path):
    path = model.save(tmp_path / "lm.json")
    again = LatencyModel.load(path)
    rows = [(s, 2, 3, 1) for s in random_shapes(20, seed=11)]
    np.testing.assert_allclose(again.predict_many(rows), model.predict_many(rows), rtol=1e-6)
    (tmp_path / "lm.conv.ubj").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        LatencyModel.load(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        LatencyModel.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="mpqc fit"):
        LatencyModel.load(tmp_path / "missing.json")


def test_emulated_timings_are_refused_unless_asked_for():
    records = synthetic_records(40, emulated=True)
    with pytest.raises(DataError, match="emulated"):
        fit_latency_model(records, TARGET)
    assert fit_latency_model(records, TARGET, allow_emulated=True).metrics["emulated_records"] == 40


def test_too_few_shapes_and_wrong_target_are_clear_errors():
    with pytest.raises(DataError, match="at least 5"):
        fit_latency_model(synthetic_records(3), TARGET)
    with pytest.raises(DataError, match="no successful measurement of target"):
        fit_latency_model(synthetic_records(10), load_target("arm64-neon"))


def test_network_prediction_and_table(model, tmp_path):
    from mpqc.models import build_model, describe_layers
    layers = describe_layers(build_model("resnet20"), (3, 32, 32))
    config = parse_config("uniform:2,2", layers)
    assert len(config) == sum(l.quantizable for l in layers) == 18
    net = predict_network(model, layers, config)
    expected = sum(model.predict(LayerShape.from_layer(l), 2, 2) for l in layers if l.quantizable)
    assert net.total_ms == pytest.approx(expected)
    table = build_table(model, layers, (1, 2, 3, 4), (1, 2, 3, 4))
    assert table.ms.shape == (18, 4, 4) and table.total(config) == pytest.approx(net.total_ms)
    assert (table.ms[:, 3, 3] > table.ms[:, 0, 0]).all()  # 4x4 costs more than 1x1
    model.save(tmp_path / "lm.json")
    names, ms = latency_table(tmp_path / "lm.json", layers, (1, 2), (1, 2))
    assert names == list(table.names) and ms.shape == (18, 2, 2)
    # configurations as files
    (tmp_path / "c.json").write_text('{"layers": [' + ",".join(
        f'{{"name": "{n}", "a": 1, "w": 2}}' for n in config) + "]}")
    assert set(parse_config(str(tmp_path / "c.json"), layers).values()) == {(1, 2)}
    (tmp_path / "bad.json").write_text('{"nope": [1, 1]}')
    with pytest.raises(ConfigError, match="'nope' is not a quantizable layer"):
        parse_config(str(tmp_path / "bad.json"), layers)
    with pytest.raises(ConfigError, match="outside 1..8"):
        parse_config("uniform:0,2", layers)
