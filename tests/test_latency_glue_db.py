"""Glue in the latency database and everything that reads it: `mpqc measure` writes it
(resumable), `mpqc fit` carries it into the model, predict, the search's cost table,
`mpqc compile --latency-model` and `mpqc bench latency --compiled` add it."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpqc.cli import main
from mpqc.jsonl import append_jsonl
from mpqc.latency.glue_db import GlueRecord, model_glue_key, read_glue
from mpqc.latency.network import parse_config, predict_network
from mpqc.latency.predictor import LatencyModel, fit_latency_model
from mpqc.latency.records import package_versions, read_db
from mpqc.models import build_model, describe_layers
from mpqc.search.objective import (barrier_penalty, expected_cost, feasible_start,
                                   latency_cost_table, repair_to_budget)
from mpqc.targets import load_target
from test_latency_fit import synthetic_records

HOST = load_target("host")
SHAPE = (1, 28, 28)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def host_records(n=120):
    return [replace(r, target=HOST.name, target_tvm=dict(HOST.tvm_target))
            for r in synthetic_records(n)]


def glue_record(glue_ms=0.05, threads=1, **kw):
    return GlueRecord(target=HOST.name, model="democnn", input_shape=SHAPE, threads=threads,
                      pairs=((1, 1), (4, 4)), library_ms=(0.10, 0.30),
                      kernels_ms=(0.10 - glue_ms + 0.01, 0.30 - glue_ms - 0.01),
                      glue_ms=glue_ms, repeats=3, versions=package_versions(), timestamp=1.0,
                      **kw)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A host latency model (synthetic timings) holding 0.05 ms of glue for democnn."""
    path = tmp_path_factory.mktemp("glue") / "lm.json"
    model = fit_latency_model(host_records(), HOST, glue=[glue_record()])
    model.save(path)
    return path


def test_glue_lines_share_the_database_without_disturbing_read_db(tmp_path):
    db = tmp_path / "lat.jsonl"
    layer = host_records(1)[0]
    append_jsonl(db, layer.to_json())
    append_jsonl(db, glue_record().to_json())
    append_jsonl(db, replace(glue_record(), threads=2, glue_ms=0.07).to_json())
    assert read_db(db) == [layer]
    glue = read_glue(db)
    assert glue[0] == glue_record() and [g.threads for g in glue] == [1, 2]
    assert json.loads(db.read_text().splitlines()[1])["kind"] == "glue"
    assert glue[0].point_glue_ms == pytest.approx((0.04, 0.06))
    assert glue[0].spread_ms == pytest.approx(0.02)


def test_fit_carries_the_glue_of_its_target_and_predict_adds_it(tmp_path, model_file):
    model = LatencyModel.load(model_file)
    assert model.glue_ms("democnn", SHAPE, 1) == pytest.approx(0.05)
    assert model.glue_ms("democnn", SHAPE, 2) is None
    assert model.glue_ms("resnet20", (3, 32, 32)) is None
    assert model.metrics["glue_networks"] == 1
    # through the command line: glue of another target, stale kernels or a library
    # built another way (an older LIBRARY_FORMAT: the VM in bytecode mode) is left out
    db = tmp_path / "lat.jsonl"
    for r in host_records():
        append_jsonl(db, r.to_json())
    append_jsonl(db, glue_record(0.02).to_json())
    append_jsonl(db, replace(glue_record(0.9), target="x86-avx2").to_json())
    append_jsonl(db, replace(glue_record(0.9), threads=4, versions={"schedules": "old"}).to_json())
    append_jsonl(db, replace(glue_record(0.9), threads=3,
                             versions={**package_versions(), "library": 1}).to_json())
    out = run("fit", "--db", db, "--out", tmp_path / "lm.json")
    assert out.exit_code == 0, out.output
    assert "glue democnn|1x28x28|1: 1.000 x kernels + 0.0200 ms" in out.output
    assert LatencyModel.load(tmp_path / "lm.json").glue == {
        model_glue_key("democnn", SHAPE, 1): 0.02}
    out = run("predict", "--model-file", tmp_path / "lm.json", "--model", "democnn", "--config",
              "uniform:2,2", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["glue_ms"] == 0.02 and result["glue_measured"] is True
    assert result["total_ms"] == pytest.approx(sum(l["ms"] for l in result["layers"]) + 0.02)
    out = run("predict", "--model-file", tmp_path / "lm.json", "--model", "democnn", "--config",
              "uniform:2,2", "--threads", "2")
    assert out.exit_code == 0 and "no glue measured" in out.output


def test_latency_cost_table_offset_is_the_models_glue(model_file):
    layers = describe_layers(build_model("democnn"), SHAPE)
    plain = latency_cost_table(model_file, layers, (1, 2, 4), (1, 2, 4))
    glued = latency_cost_table(model_file, layers, (1, 2, 4), (1, 2, 4), model_spec="democnn")
    assert plain.offset == 0.0 and glued.offset == pytest.approx(0.05)
    assert (glued.cost == plain.cost).all()
    assert latency_cost_table(model_file, layers, (1, 2), (1, 2), threads=3,
                              model_spec="democnn").offset == 0.0  # not measured: none
    config = {n: (2, 2) for n in glued.names}
    assert glued.total(config) == pytest.approx(plain.total(config) + 0.05)
    model = LatencyModel.load(model_file)
    net = predict_network(model, layers, config, 1, model.glue_ms("democnn", SHAPE, 1))
    assert glued.total(config) == pytest.approx(net.total_ms)


def test_the_kernel_scale_of_the_network_prices_every_layer(model_file, tmp_path):
    layers = describe_layers(build_model("democnn"), SHAPE)
    model = LatencyModel.load(model_file)
    model.kernel_scales = {model_glue_key("democnn", SHAPE, 1): 1.1}
    scaled_file = model.save(tmp_path / "scaled.json")
    plain = latency_cost_table(model_file, layers, (1, 2), (1, 2), model_spec="democnn")
    scaled = latency_cost_table(scaled_file, layers, (1, 2), (1, 2), model_spec="democnn")
    np.testing.assert_allclose(scaled.cost, 1.1 * plain.cost)
    assert scaled.offset == plain.offset == pytest.approx(0.05)
    config = {n: (1, 2) for n in scaled.names}
    loaded = LatencyModel.load(scaled_file)
    assert loaded.kernel_scale("democnn", SHAPE, 1) == 1.1
    assert loaded.kernel_scale("democnn", SHAPE, 2) == 1.0   # never measured
    net = predict_network(loaded, layers, config, 1, loaded.glue_ms("democnn", SHAPE, 1),
                          loaded.kernel_scale("democnn", SHAPE, 1))
    assert scaled.total(config) == pytest.approx(net.total_ms)
    assert net.total_ms == pytest.approx(1.1 * sum(l.ms for l in net.layers) + 0.05)


def test_search_helpers_meet_a_budget_that_includes_the_glue(model_file):
    from mpqc.supernet import is_mixed, make_supernet
    layers = describe_layers(build_model("democnn"), SHAPE)
    table = latency_cost_table(model_file, layers, (1, 2, 4), (1, 2, 4), model_spec="democnn")
    kernels_span = table.uniform(4, 4) - table.minimum()
    budget = table.minimum() + 0.3 * kernels_span   # glue is in both ends
    config = repair_to_budget({n: (4, 4) for n in table.names}, table, budget)
    assert table.total(config) <= budget
    assert table.total(config) - table.offset <= budget - table.offset  # kernels fit the rest
    torch.manual_seed(0)
    supernet, _ = make_supernet(build_model("democnn"), (1, 2, 4), (1, 2, 4), SHAPE,
                                torch.randn(8, *SHAPE))
    mixed = {n: m for n, m in supernet.named_modules() if is_mixed(m)}
    start = feasible_start(mixed, table, budget)
    with torch.no_grad():
        cost = expected_cost(mixed, table)
    assert float(cost) == pytest.approx(start) and start <= budget
    assert start > table.offset  # the glue is counted, not dropped
    assert torch.isfinite(barrier_penalty(cost, budget))


def test_measure_writes_glue_once_and_a_rerun_skips_it(tmp_path, monkeypatch):
    db = tmp_path / "lat.jsonl"
    out = run("measure", "--model", "democnn", "--a-bits", "1", "--w-bits", "1,2",
              "--repeats", "3", "--db", db)
    assert out.exit_code == 0, out.output
    assert "8 measured" in out.output and "glue of democnn" in out.output
    [glue] = read_glue(db)
    assert len(read_db(db)) == 8  # layer records untouched by the glue line
    assert (glue.target, glue.model, glue.input_shape, glue.threads) == \
        ("host", "democnn", SHAPE, 1)
    assert glue.pairs == ((1, 1), (1, 2)) and glue.repeats == 3 and not glue.emulated
    assert all(ms > 0 for ms in glue.library_ms + glue.kernels_ms)
    assert glue.kernels_ms[1] > glue.kernels_ms[0] * 0.8  # 2-bit weights: no cheaper
    from mpqc.latency.glue import GluePoint, network_fit
    points = [GluePoint(a, w, lib, k) for (a, w), lib, k in zip(glue.pairs, glue.library_ms,
                                                               glue.kernels_ms)]
    assert (glue.kernel_scale, glue.glue_ms) == pytest.approx(network_fit(points))
    assert glue.versions["schedules"] and glue.timestamp > 0 and glue.device.startswith("host:")

    import mpqc.latency.glue as glue_mod

    def no_build(*a, **k):
        raise AssertionError("glue measured again")

    monkeypatch.setattr(glue_mod, "measure_glue", no_build)
    out = run("measure", "--model", "democnn", "--a-bits", "1", "--w-bits", "1,2",
              "--repeats", "3", "--db", db)
    assert out.exit_code == 0, out.output
    assert "0 measured, 8 already" in out.output and "already in" in out.output
    assert read_glue(db) == [glue]
    out = run("measure", "--model", "democnn", "--a-bits", "1", "--w-bits", "1,2",
              "--repeats", "3", "--no-glue", "--db", db)
    assert out.exit_code == 0 and "glue of" not in out.output and "glue " not in out.output


def test_glue_usage_errors(tmp_path):
    db = tmp_path / "x.jsonl"
    out = run("measure", "--space", "random", "--count", "2", "--glue", "--db", db)
    assert out.exit_code == 2 and "--glue times a network: give --model" in out.output
    out = run("measure", "--model", "democnn", "--glue", "--rpc-tracker", "127.0.0.1:1",
              "--rpc-key", "k", "--db", db)
    assert out.exit_code == 2 and "--no-glue" in out.output


def test_compile_predicts_kernels_plus_glue_into_the_manifest(tmp_path, model_file):
    out_so = tmp_path / "d.so"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"conv2": [1, 2], "conv3": [2, 1], "conv4": [4, 4],
                                  "conv5": [2, 2]}))
    out = run("compile", "--model", "democnn", "--config", config, "--out", out_so,
              "--latency-model", model_file, "--json")
    assert out.exit_code == 0, out.output
    manifest = json.loads(out.output)
    layers = describe_layers(build_model("democnn"), SHAPE)
    model = LatencyModel.load(model_file)
    expected = predict_network(model, layers, parse_config(str(config), layers), 1, 0.05)
    assert manifest["predicted_ms"] == pytest.approx(expected.total_ms, rel=1e-12)
    prediction = manifest["prediction"]
    assert prediction["glue_ms"] == 0.05 and prediction["glue_measured"]
    assert prediction["threads"] == 1 and prediction["target"] == "host"
    assert [(l["name"], l["a_bits"], l["w_bits"]) for l in prediction["layers"]] == \
        [("conv2", 1, 2), ("conv3", 2, 1), ("conv4", 4, 4), ("conv5", 2, 2)]
    # an explicit figure still wins; the per-layer prediction stays
    out = run("compile", "--model", "democnn", "--config", config, "--out", out_so,
              "--latency-model", model_file, "--predicted-ms", "1.5", "--json")
    assert out.exit_code == 0, out.output
    manifest = json.loads(out.output)
    assert manifest["predicted_ms"] == 1.5
    assert manifest["prediction"]["total_ms"] == pytest.approx(expected.total_ms)


def test_compile_refuses_a_latency_model_of_another_target(tmp_path):
    path = tmp_path / "avx2.json"
    fit_latency_model(synthetic_records(60), load_target("x86-avx2")).save(path)
    out = run("compile", "--model", "democnn", "--bits", "uniform:1,1", "--out",
              tmp_path / "d.so", "--latency-model", path)
    assert out.exit_code == 2 and "is of target x86-avx2, not host" in out.output
    assert not (tmp_path / "d.so").exists()


def test_bench_latency_compiled_on_two_configurations(tmp_path, model_file):
    result_path = tmp_path / "r.json"
    out = run("bench", "latency", "--compiled", "--model-file", model_file, "--model",
              "democnn", "--configs", "2", "--bits", "1,2", "--repeats", "3", "--json",
              result_path)
    assert out.exit_code == 0, out.output
    assert "compiled configurations" in out.output
    result = json.loads(result_path.read_text())
    assert result["configs"] == 2 and result["compiled"] and result["glue_ms"] == 0.05
    assert all(ms > 0 for ms in result["measured_ms"])
    # predicted = the model's kernels (as if never measured) + glue, per configuration
    from mpqc.latency.network import random_configs
    from mpqc.latency.records import LayerShape
    layers = describe_layers(build_model("democnn"), SHAPE)
    model = LatencyModel.load(model_file)
    for config, predicted in zip(random_configs(layers, (1, 2), (1, 2), 2, 0),
                                 result["predicted_ms"]):
        rows = [(LayerShape.from_layer(l), *config[l.name], 1) for l in layers if l.quantizable]
        assert predicted == pytest.approx(model.predict_many(rows, use_exact=False).sum() + 0.05)
    errors = [(p - m) / m for p, m in zip(result["predicted_ms"], result["measured_ms"])]
    assert result["errors"] == pytest.approx(errors)
    assert result["mean_abs_error"] == pytest.approx(np.mean(np.abs(errors)))
    assert result["max_abs_error"] == pytest.approx(np.max(np.abs(errors)))
    assert len(result["exact_table"]["predicted_ms"]) == 2


def test_a_search_request_takes_the_glue_from_the_latency_model(model_file, tmp_path):
    from mpqc.search.driver import SearchRequest, cost_table
    layers = describe_layers(build_model("democnn"), SHAPE)
    request = SearchRequest(model="democnn", data="mnist", out=tmp_path / "s.json",
                            latency_model=str(model_file))
    assert cost_table(request, layers, (1, 2), (1, 2), SHAPE).offset == pytest.approx(0.05)
    assert cost_table(replace(request, glue_ms=0.3), layers, (1, 2), (1, 2), SHAPE).offset == 0.3
    assert cost_table(replace(request, cost="bitops"), layers, (1, 2), (1, 2), SHAPE).offset == 0.0
