"""BP-NAS: a feasible start, E[T] inside the budget through the search, a returned
configuration that meets it, Prob-1 towards one-hot; exact resume; pluggable cost tables."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mpqc.search.loop as loop
from mpqc.cli import main
from mpqc.data import load_dataset, subset
from mpqc.errors import ConfigError
from mpqc.models import build_model, describe_layers
from mpqc.search import CostTable, bitops_table, expected_cost, prob1_regularizer
from mpqc.search.loop import SearchSettings, run_search
from mpqc.search.objective import feasible_start
from mpqc.supernet import is_mixed, make_supernet


@pytest.fixture(scope="module")
def tiny_mnist():
    splits = load_dataset("mnist")
    return dataclasses.replace(splits, train=subset(splits.train, 512, 0),
                               val=subset(splits.val, 256, 0), test=subset(splits.test, 256, 0))


def _table(model, shape):
    return bitops_table(describe_layers(model, shape), (1, 2, 3, 4), (1, 2, 3, 4))


SETTINGS = dict(method="bpnas", epochs=3, finetune_epochs=1, fp32_epochs=1, batch_size=64,
                progress=False)


@pytest.mark.parametrize("ratio,margin", [(0.2, 0.0), (0.3, 0.1)])
def test_bpnas_stays_inside_the_budget_and_returns_a_feasible_configuration(tiny_mnist, tmp_path,
                                                                           ratio, margin):
    torch.manual_seed(0)
    model = build_model("democnn")
    table = _table(model, tiny_mnist.input_shape)
    budget = ratio * table.uniform(4, 4)
    # uniform strengths average the table: outside these budgets, so the start is tilted
    assert table.cost.mean(axis=(1, 2)).sum() > budget
    result = run_search(model, tiny_mnist, table, budget,
                        SearchSettings(**SETTINGS, margin=margin), tmp_path / "s.ckpt")
    floor = table.minimum()
    assert result["start_expected_cost"] <= (floor + 0.85 * (budget - floor)) * (1 + 1e-6)
    assert len(result["trajectory"]) == 3
    for epoch in result["trajectory"]:   # the largest E[T] of any strength step
        assert epoch["max_expected_cost"] <= budget
    assert result["predicted"] <= max((1 - margin) * budget, floor) * (1 + 1e-9)
    assert result["predicted"] == pytest.approx(sum(l["cost"] for l in result["layers"]))
    assert result["world_size"] == 1
    assert result["method"] == "bpnas" and result["fixed_layers"]   # the 8-bit first/last


def test_feasible_start_reaches_the_target_and_leaves_a_feasible_start_alone():
    torch.manual_seed(0)
    model = build_model("resnet20")
    table = _table(model, (3, 32, 32))
    net, _ = make_supernet(model, (1, 2, 3, 4), (1, 2, 3, 4), (3, 32, 32))
    mixed = {n: m for n, m in net.named_modules() if is_mixed(m)}
    uniform = expected_cost(mixed, table).item()
    assert feasible_start(mixed, table, 2 * uniform) == pytest.approx(uniform)
    assert all(m.alpha.detach().abs().max().item() == 0 for m in mixed.values())
    floor = table.minimum()
    budget = 1.05 * floor
    start = feasible_start(mixed, table, budget, target=0.5)
    assert floor < start <= (floor + 0.5 * (budget - floor)) * (1 + 1e-6)
    # tilted towards the cheap candidates: the 1-bit pair leads in every layer
    assert all(m.chosen() == (1, 1) for m in mixed.values())
    # but not saturated: the strengths still get gradients from the cost
    for m in mixed.values():
        m.alpha.grad = m.beta.grad = None
    expected_cost(mixed, table).backward()
    assert all(m.alpha.grad.abs().max() > 0 and m.beta.grad.abs().max() > 0
               for m in mixed.values())


def test_prob1_drives_strengths_to_one_hot():
    torch.manual_seed(0)
    layers = {str(i): make_supernet_layer() for i in range(4)}
    opt = torch.optim.Adam([p for m in layers.values() for p in (m.alpha, m.beta)], lr=0.1)
    start = prob1_regularizer(layers).item()
    for _ in range(200):
        opt.zero_grad()
        prob1_regularizer(layers).backward()
        opt.step()
    assert prob1_regularizer(layers).item() < 0.01 * start
    for m in layers.values():
        q, p = m.probabilities()
        assert q.max().item() > 0.99 and p.max().item() > 0.99


def make_supernet_layer():
    from mpqc.supernet import MixedConv2d
    layer = MixedConv2d.from_float(torch.nn.Conv2d(2, 2, 1), (1, 2, 3, 4), (1, 2, 3, 4))
    with torch.no_grad():
        layer.alpha.normal_(0, 0.1)
        layer.beta.normal_(0, 0.1)
    return layer


def test_an_interrupted_search_resumes_to_the_same_result(tiny_mnist, tmp_path, monkeypatch):
    settings = SearchSettings(**{**SETTINGS, "epochs": 2})

    def search(path):
        torch.manual_seed(0)
        model = build_model("democnn")
        return run_search(model, tiny_mnist, _table(model, tiny_mnist.input_shape),
                          0.3 * _table(model, tiny_mnist.input_shape).uniform(4, 4), settings, path)

    whole = search(tmp_path / "whole.ckpt")

    class Killed(Exception):
        pass

    save = loop.Checkpoint.save

    def kill_after_first_search_epoch(self, state):
        save(self, state)
        if state["phase"] == "search" and state["epoch"] == 1:
            raise Killed
    monkeypatch.setattr(loop.Checkpoint, "save", kill_after_first_search_epoch)
    with pytest.raises(Killed):
        search(tmp_path / "cut.ckpt")
    monkeypatch.setattr(loop.Checkpoint, "save", save)
    epochs = []
    train_epoch = loop._train_epoch
    monkeypatch.setattr(loop, "_train_epoch", lambda *a: epochs.append(a[3]) or train_epoch(*a))
    resumed = search(tmp_path / "cut.ckpt")
    assert epochs == ["fine-tune epoch 1/1"]   # the fp32 phase is not trained again
    assert resumed["layers"] == whole["layers"]
    assert resumed["trajectory"] == whole["trajectory"]
    assert resumed["accuracy"] == whole["accuracy"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_search_reads_the_latency_table_of_a_latency_model(tmp_path, monkeypatch):
    import mpqc.latency.table
    calls = []

    def fake_table(model_file, layers, a_bits, w_bits, threads):
        calls.append((str(model_file), tuple(a_bits), tuple(w_bits), threads))
        chosen = [l for l in layers if l.quantizable]
        ms = np.array([[[0.01 * (i + 1) * a * w for w in w_bits] for a in a_bits]
                       for i, _ in enumerate(chosen)])
        return [l.name for l in chosen], ms
    monkeypatch.setattr(mpqc.latency.table, "latency_table", fake_table)
    import mpqc.search.objective   # no glue in this fake model (tested in test_latency_glue_db)
    monkeypatch.setattr(mpqc.search.objective, "_glue", lambda *a: (0.0, 1.0))
    out = tmp_path / "s.json"
    result = run("search", "--model", "democnn", "--data", "mnist", "--subset", "300",
                 "--latency-model", tmp_path / "lm.json", "--budget-ms", "0.5", "--bits", "1,2",
                 "--epochs", "1", "--fp32-epochs", "1", "--finetune-epochs", "0",
                 "--threads", "2", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert calls == [(str(tmp_path / "lm.json"), (1, 2), (1, 2), 2)]
    report = json.loads(out.read_text())
    assert report["cost_unit"] == "ms" and report["budget_ms"] == 0.5
    assert report["predicted_ms"] <= 0.5
    by_name = {l["name"]: l for l in report["layers"]}
    assert by_name["conv3"]["predicted_ms"] == pytest.approx(
        0.02 * by_name["conv3"]["a"] * by_name["conv3"]["w"])


def test_a_missing_latency_package_names_the_bitops_alternative(monkeypatch):
    import sys
    from mpqc.search.objective import latency_cost_table
    monkeypatch.setitem(sys.modules, "mpqc.latency.table", None)
    with pytest.raises(ConfigError, match="--cost bitops"):
        latency_cost_table("lm.json", [], (1, 2), (1, 2))


def test_latency_cost_without_a_model_and_bad_numbers_are_refused(tmp_path):
    base = ["search", "--model", "democnn", "--data", "mnist", "--subset", "200",
            "--out", tmp_path / "s.json", "--quiet"]
    out = run(*base, "--cost", "latency", "--budget-ratio", "0.5")
    assert out.exit_code == 2 and "--cost bitops" in out.output
    out = run(*base, "--budget-ratio", "0.5", "--mu", "-1")
    assert out.exit_code == 2 and "--mu" in out.output
    out = run(*base, "--budget-ratio", "-0.5")
    assert out.exit_code == 2 and "--budget-ratio" in out.output
    out = run(*base, "--budget-ratio", "0.5", "--uniform", "2")
    assert out.exit_code == 2 and "A,W" in out.output
    out = run(*base, "--budget-ratio", "0.5", "--uniform", "2,9")
    assert out.exit_code == 2 and "outside 1..8" in out.output


def test_a_uniform_baseline_trains_as_many_steps_as_the_search(tiny_mnist, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("democnn")
    table = _table(model, tiny_mnist.input_shape)
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    settings = SearchSettings(**{**SETTINGS, "epochs": 2, "finetune_epochs": 0})
    result = run_search(model, tiny_mnist, table, table.uniform(4, 4), settings,
                        tmp_path / "u.ckpt", uniform=(2, 2), pretrained=True)
    # 2 epochs x min(512, 256) / 64 batches of weight steps, no search, no fine-tuning
    assert len(steps) == 2 * 4
    assert result["method"] == "uniform" and result["predicted"] == table.uniform(2, 2)
    assert {(l["a"], l["w"]) for l in result["layers"]} == {(2, 2)}
    trained = result["model_q"].conv3.weight
    assert not torch.equal(trained, model.conv3.weight)


def test_a_fixed_configuration_trains_exactly_as_the_uniform_baseline(tiny_mnist, tmp_path):
    # the retraining protocol: a searched configuration gets the baselines' schedule; at
    # a uniform configuration the two paths must train the very same weights
    settings = SearchSettings(**{**SETTINGS, "epochs": 1, "finetune_epochs": 1})
    results = {}
    for kind in ("uniform", "fixed"):
        torch.manual_seed(0)
        model = build_model("democnn")
        table = _table(model, tiny_mnist.input_shape)
        extra = ({"uniform": (2, 2)} if kind == "uniform"
                 else {"fixed": {n: (2, 2) for n in table.names}})
        results[kind] = run_search(model, tiny_mnist, table, table.uniform(4, 4), settings,
                                   tmp_path / f"{kind}.ckpt", pretrained=True, **extra)
    assert results["fixed"]["method"] == "fixed"
    a, b = (results[k]["model_q"].state_dict() for k in ("uniform", "fixed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    torch.manual_seed(0)
    model = build_model("democnn")
    table = _table(model, tiny_mnist.input_shape)
    mixed = {n: (1 + i % 4, 4 - i % 4) for i, n in enumerate(table.names)}
    result = run_search(model, tiny_mnist, table, table.uniform(4, 4), settings,
                        tmp_path / "mixed.ckpt", pretrained=True, fixed=mixed)
    assert {l["name"]: (l["a"], l["w"]) for l in result["layers"]} == mixed
    assert result["predicted"] == pytest.approx(table.total(mixed))
    with pytest.raises(ConfigError, match="outside the candidate bit-widths"):
        run_search(model, tiny_mnist, table, table.uniform(4, 4), settings, tmp_path / "x.ckpt",
                   pretrained=True, fixed={**mixed, table.names[0]: (5, 5)})
    with pytest.raises(ConfigError, match="no bit pair for layer"):
        run_search(model, tiny_mnist, table, table.uniform(4, 4), settings, tmp_path / "y.ckpt",
                   pretrained=True, fixed={table.names[0]: (2, 2)})


def test_train_config_on_the_command_line(tmp_path):
    config = tmp_path / "config.json"
    base = ["search", "--model", "democnn", "--data", "mnist", "--subset", "200",
            "--budget-ratio", "1", "--epochs", "1", "--finetune-epochs", "0", "--fp32-epochs",
            "0", "--out", tmp_path / "s.json", "--quiet"]
    config.write_text(json.dumps({"conv2": [2, 3], "nonsense": [2, 2]}))
    out = run(*base, "--train-config", config)
    assert out.exit_code == 2 and "'nonsense' is not a quantizable layer" in out.output
    config.write_text(json.dumps({"conv2": [2, 9]}))
    out = run(*base, "--train-config", config)
    assert out.exit_code == 2 and "outside 1..8" in out.output
    out = run(*base, "--train-config", config, "--uniform", "2,2")
    assert out.exit_code == 2 and "not both" in out.output
    layers = [n for n in ("conv2", "conv3", "conv4", "conv5")]
    config.write_text(json.dumps({n: [5 if n == "conv2" else 2, 2] for n in layers}))
    out = run(*base, "--train-config", config, "--bits", "1,2")
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["method"] == "fixed"
    assert {l["name"]: [l["a"], l["w"]] for l in result["layers"]} == json.loads(config.read_text())


def test_a_strength_step_never_carries_the_expected_cost_across_the_budget(tiny_mnist, tmp_path,
                                                                          monkeypatch):
    # a weak barrier and large steps: Adam's normalised steps jump over the barrier
    # unless the step is backtracked
    settings = SearchSettings(**{**SETTINGS, "epochs": 2, "finetune_epochs": 0, "mu": 1e-4,
                                 "strength_lr": 1.0})

    def peak(path):
        torch.manual_seed(0)
        model = build_model("democnn")
        table = _table(model, tiny_mnist.input_shape)
        budget = 0.3 * table.uniform(4, 4)
        result = run_search(model, tiny_mnist, table, budget, settings, path, until="search")
        return max(e["max_expected_cost"] for e in result["trajectory"]) / budget

    assert peak(tmp_path / "a.ckpt") <= 1.0
    import mpqc.search.loop as loop
    monkeypatch.setattr(loop, "_stay_inside", lambda *args, **kwargs: None)
    assert peak(tmp_path / "b.ckpt") > 1.0      # what the backtracking prevents


def test_an_outward_step_at_the_budget_moves_along_it_instead_of_freezing():
    """At E[T] = budget a step that raises one layer's bits and lowers another's, but
    raises E[T] overall, keeps its trade (projected onto the budget surface)."""
    from mpqc.search.loop import _stay_inside
    torch.manual_seed(0)
    layers = {"a": make_supernet_layer(), "b": make_supernet_layer()}
    cost = np.array([[[a * w for w in (1, 2, 3, 4)] for a in (1, 2, 3, 4)]] * 2, float)
    table = CostTable(("a", "b"), (1, 2, 3, 4), (1, 2, 3, 4), cost, "GBitOPs")
    strengths = [p for m in layers.values() for p in (m.alpha, m.beta)]
    before = [p.detach().clone() for p in strengths]
    budget = float(expected_cost(layers, table))       # exactly at the budget
    up = torch.tensor([-0.3, -0.1, 0.1, 0.3])          # towards more bits
    with torch.no_grad():                              # layer a up a lot, b down a little
        layers["a"].alpha.add_(up)
        layers["a"].beta.add_(up)
        layers["b"].alpha.sub_(0.5 * up)
        layers["b"].beta.sub_(0.5 * up)
    assert float(expected_cost(layers, table)) > budget
    _stay_inside(strengths, before, layers, table, budget)
    assert float(expected_cost(layers, table)) <= budget
    moved = [float((p - b).abs().max()) for p, b in zip(strengths, before)]
    assert min(moved) > 1e-3                           # not undone: the trade survives
    # layer a still got more bits than it had, paid for by layer b
    q, p = layers["a"].probabilities()
    q0, p0 = torch.softmax(before[1], 0), torch.softmax(before[0], 0)
    bits = torch.tensor([1.0, 2, 3, 4])
    assert float(p @ bits) > float(p0 @ bits)
