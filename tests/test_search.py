"""EBS supernet and the BP-NAS search: gradients, codes, the barrier, budgets, resume."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpqc.cli import main
from mpqc.errors import ConfigError, ModelError
from mpqc.models import build_model, describe_layers
from mpqc.quant import act_codes, weight_codes
from mpqc.search import (CostTable, barrier_penalty, bitops_table, expected_cost,
                         prob1_regularizer, repair_to_budget, spend_slack)
from mpqc.supernet import is_mixed, make_supernet


@pytest.fixture(scope="module")
def resnet_supernet():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    net, report = make_supernet(model, (1, 2, 3, 4), (1, 2, 3, 4), (3, 32, 32),
                                calib=torch.randn(8, 3, 32, 32), clip_k=3.0)
    return model, net, report


def test_gradients_reach_strengths_and_steps(resnet_supernet):
    _, net, report = resnet_supernet
    assert len(report.searchable) == 18
    assert [n for n, _ in report.fixed] == ["conv1", "linear"]
    net.train()
    torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)),
                                      torch.tensor([0, 1, 2, 3])).backward()
    for name, m in net.named_modules():
        if is_mixed(m):
            for p in (m.alpha, m.beta, m.w_steps, m.a_steps, m.weight):
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_hot_strengths_give_the_codes_of_mpqc_quant(resnet_supernet):
    _, net, _ = resnet_supernet
    layer = net.layer2[1].conv1
    with torch.no_grad():
        layer.alpha.fill_(-1e4)
        layer.alpha[2] = 1e4   # w = 3
        layer.beta.fill_(-1e4)
        layer.beta[1] = 1e4    # a = 2
    assert layer.chosen() == (2, 3)
    w = layer._reshaped(layer.weight)
    torch.testing.assert_close(layer.quantized_weight(),
                               weight_codes(w, layer.w_steps[2], 3) * layer.w_steps[2])
    x = torch.rand(2, 32, 16, 16)
    torch.testing.assert_close(layer.quantized_input(x),
                               act_codes(x, layer.a_steps[1], 2) * layer.a_steps[1])


def test_barrier_and_prob1():
    budget = 10.0
    costs = torch.tensor([1.0, 5.0, 9.0, 9.9, 12.0, 20.0])
    b = barrier_penalty(costs, budget)
    assert torch.isfinite(b).all() and (b[1:] > b[:-1]).all()  # steep, finite past the budget
    assert b[0] < 0.2
    mixed = {"x": type("L", (), {"probabilities": lambda self: (torch.tensor([1.0, 0.0]),
                                                                 torch.tensor([0.0, 1.0]))})()}
    assert float(prob1_regularizer(mixed)) == 0.0
    mixed = {"x": type("L", (), {"probabilities": lambda self: (torch.tensor([0.5, 0.5]),
                                                                 torch.tensor([0.5, 0.5]))})()}
    assert float(prob1_regularizer(mixed)) == 1.0


def test_expected_cost_and_repair(resnet_supernet):
    model, net, _ = resnet_supernet
    layers = describe_layers(model, (3, 32, 32))
    table = bitops_table(layers, (1, 2, 3, 4), (1, 2, 3, 4))
    mixed = {n: m for n, m in net.named_modules() if is_mixed(m)}
    for m in mixed.values():
        with torch.no_grad():
            m.alpha.zero_()
            m.beta.zero_()
    uniform_mean = float(np.mean(table.cost, axis=(1, 2)).sum())
    assert expected_cost(mixed, table).item() == pytest.approx(uniform_mean, rel=1e-5)
    budget = table.uniform(2, 2)
    fixed = repair_to_budget({n: (4, 4) for n in table.names}, table, budget)
    assert table.total(fixed) <= budget
    with pytest.raises(ConfigError, match="smallest achievable"):
        repair_to_budget(fixed, table, table.minimum() * 0.99)


def test_repair_drops_what_the_strengths_want_least_per_cost_saved():
    names = ("big", "small")
    # "big" saves the most per drop; its strengths want 4-bit activations, "small"'s do not
    cost = np.array([[[6.0, 6.5], [8.0, 8.5]], [[1.0, 1.2], [2.0, 2.2]]])  # a x w in (1, 4)
    table = CostTable(names, (1, 4), (1, 4), cost, "ms", offset=0.0)
    start = {"big": (4, 4), "small": (4, 4)}
    prefs = {"big": ([0.05, 0.95], [0.5, 0.5]), "small": ([0.6, 0.4], [0.5, 0.5])}
    budget = table.total(start) - 1.0          # one drop of "small"'s a is enough
    naive = repair_to_budget(start, table, budget)
    assert naive["big"] == (1, 4)               # largest saving first
    guided = repair_to_budget(start, table, budget, prefs)
    assert guided == {"big": (4, 4), "small": (1, 4)}
    assert table.total(guided) <= budget


def test_repair_meets_the_budget_on_a_non_monotone_table():
    """Noise can make the lower pair cost more: no one-step drop saves anything."""
    cost = np.array([[[3.5, 2.0], [3.0, 5.0]]])   # (1,1) costs more than (4,1)
    table = CostTable(("l0",), (1, 4), (1, 4), cost, "ms", offset=0.0)
    fixed = repair_to_budget({"l0": (4, 1)}, table, 2.6, {"l0": ([0.5, 0.5], [0.5, 0.5])})
    assert fixed == {"l0": (1, 4)} and table.total(fixed) <= 2.6


def test_spend_slack_raises_what_the_strengths_want_and_stays_within_budget():
    names = ("l0", "l1", "l2")
    cost = np.array([[[1.0, 2.0], [2.0, 4.0]]] * 3)     # a x w in (1, 2), BitOPs-like
    table = CostTable(names, (1, 2), (1, 2), cost, "GBitOPs", offset=0.5)
    cheapest = {n: (1, 1) for n in names}
    # l1 wants 2-bit weights, l2 2-bit activations, l0 neither
    prefs = {"l0": ([0.9, 0.1], [0.9, 0.1]), "l1": ([0.9, 0.1], [0.2, 0.8]),
             "l2": ([0.3, 0.7], [0.9, 0.1])}
    budget = table.total(cheapest) + 2.0    # room for exactly two one-step raises
    config, raised = spend_slack(cheapest, table, budget, prefs)
    assert table.total(config) <= budget
    assert config == {"l0": (1, 1), "l1": (1, 2), "l2": (2, 1)}
    assert [r["layer"] for r in raised] == ["l1", "l2"]
    # no slack: nothing moves; all the budget: everything at the top
    assert spend_slack(cheapest, table, table.total(cheapest), prefs) == (cheapest, [])
    top, _ = spend_slack(cheapest, table, table.uniform(2, 2), prefs)
    assert top == {n: (2, 2) for n in names}


def test_a_model_with_nothing_to_search_is_refused():
    tiny = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ModelError, match="no layer to search"):
        make_supernet(tiny, (1, 2), (1, 2), (1, 28, 28))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_search_cli_meets_the_budget_and_resumes(tmp_path):
    out = tmp_path / "search.json"
    args = ["search", "--model", "democnn", "--data", "mnist", "--subset", "600",
            "--budget-ratio", "0.3", "--epochs", "1", "--finetune-epochs", "1",
            "--fp32-epochs", "1", "--batch-size", "64", "--out", out, "--quiet"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    result = json.loads(out.read_text())
    for key in ("budget_ms", "predicted_ms", "method", "target", "layers", "accuracy",
                "fp32_accuracy", "trajectory"):
        assert key in result
    assert result["predicted_ms"] <= result["budget_ms"]
    assert len(result["layers"]) == 4 and len(result["trajectory"]) == 1
    assert all(1 <= l["a"] <= 4 and 1 <= l["w"] <= 4 for l in result["layers"])
    # the chosen configuration is the argmax (repaired to the budget), then the raises
    chosen = {l["name"]: [l["a"], l["w"]] for l in result["layers"]}
    assert set(result["argmax"]) == set(chosen)
    for step in result["raised"]:
        assert step["to"] != step["from"]
        assert all(c >= t for c, t in zip(chosen[step["layer"]], step["to"]))
    assert (tmp_path / "search.pt").exists() and (tmp_path / "search.json.ckpt").exists()
    again = run(*args)  # everything is in the checkpoint: same result, nothing retrained
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["layers"] == result["layers"]


def test_search_cli_separate_activation_and_weight_candidates(tmp_path):
    out = tmp_path / "search.json"
    result = run("search", "--model", "democnn", "--data", "mnist", "--subset", "400",
                 "--a-bits", "2,4", "--w-bits", "1", "--budget-ratio", "0.7", "--epochs", "1",
                 "--finetune-epochs", "0", "--fp32-epochs", "1", "--batch-size", "64",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {l["w"] for l in report["layers"]} == {1}
    assert {l["a"] for l in report["layers"]} <= {2, 4}
    # the ratio is of the uniform configuration at the largest of each: a4 w1 in BitOPs
    from mpqc.models import build_model, describe_layers
    layers = [l for l in describe_layers(build_model("democnn"), (1, 28, 28)) if l.quantizable]
    a4w1 = sum(l.macs * 4 * 1 / 1e9 for l in layers)
    assert report["budget_ms"] == pytest.approx(0.7 * a4w1)
    assert report["predicted_ms"] <= report["budget_ms"]


def test_search_cli_bad_inputs(tmp_path):
    base = ["search", "--model", "democnn", "--data", "mnist", "--subset", "200",
            "--out", tmp_path / "s.json", "--quiet"]
    out = run(*base, "--budget-ms", "1e-9")
    assert out.exit_code == 2 and "smallest achievable" in out.output
    out = run(*base, "--budget-ratio", "0.5", "--bits", "0,9")
    assert out.exit_code == 2 and "outside 1..8" in out.output
    out = run(*base, "--budget-ratio", "0.5", "--a-bits", "2,9")
    assert out.exit_code == 2 and "outside 1..8" in out.output
    out = run(*base)
    assert out.exit_code == 2 and "--budget-ms" in out.output
    (tmp_path / "s.json.ckpt").write_bytes(b"not a checkpoint")
    out = run(*base, "--budget-ratio", "0.5")
    assert out.exit_code == 2 and "corrupt" in out.output


def test_mixed_activation_gradients_equal_the_composed_quantizers():
    from mpqc.quant.layers import fake_quant_act
    from mpqc.supernet.mixed import MixedConv2d
    torch.manual_seed(1)
    layer = MixedConv2d.from_float(torch.nn.Conv2d(6, 4, 3), (1, 2, 3), (1, 2, 4, 8))
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        layer.a_steps.copy_(torch.tensor([0.9, 0.4, 0.15, 0.01]))
    x = (torch.rand(2, 6, 5, 5) * 2.5).requires_grad_()
    up = torch.randn(2, 6, 5, 5)
    (layer.quantized_input(x) * up).sum().backward()
    fast = [t.grad.clone() for t in (x, layer.a_steps, layer.beta)]
    for t in (x, layer.a_steps, layer.beta):
        t.grad = None
    q = torch.softmax(layer.beta, 0)
    ref = sum(q[i] * fake_quant_act(x, layer.a_steps[i], b) for i, b in enumerate((1, 2, 4, 8)))
    torch.testing.assert_close(layer.quantized_input(x), ref)
    (ref * up).sum().backward()
    for got, want in zip(fast, (x.grad, layer.a_steps.grad, layer.beta.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # the weights, bipolar 1-bit included, through the same function
    from mpqc.quant.layers import fake_quant_weight
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.2, -0.4, 0.6]))
    layer.quantized_weight().mul(layer.weight.detach().sign() + 0.3).sum().backward()
    fast = [t.grad.clone() for t in (layer.weight, layer.w_steps, layer.alpha)]
    for t in (layer.weight, layer.w_steps, layer.alpha):
        t.grad = None
    p = torch.softmax(layer.alpha, 0)
    ref = sum(p[i] * fake_quant_weight(layer.weight, layer.w_steps[i], b)
              for i, b in enumerate((1, 2, 3)))
    torch.testing.assert_close(layer.quantized_weight(), ref)
    ref.mul(layer.weight.detach().sign() + 0.3).sum().backward()
    for got, want in zip(fast, (layer.weight.grad, layer.w_steps.grad, layer.alpha.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_supernet_memory_is_flat_in_the_number_of_candidates():
    """What autograd keeps for the backward pass of one supernet step: with 8 candidate
    bit-widths at most 1.25x what it keeps with 2 (one composed quantizer per candidate
    would keep ~4x)."""
    def saved_bytes(bits):
        torch.manual_seed(0)
        net, _ = make_supernet(build_model("resnet20"), bits, bits, (3, 32, 32),
                               calib=torch.randn(4, 3, 32, 32))
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.train()(torch.randn(16, 3, 32, 32))
        return total[0]
    assert saved_bytes(tuple(range(1, 9))) <= 1.25 * saved_bytes((1, 2))


def test_pareto_front():
    from mpqc.search.plot import pareto_front
    pts = [{"predicted": 1, "accuracy": 0.5}, {"predicted": 2, "accuracy": 0.4},
           {"predicted": 3, "accuracy": 0.9}, {"predicted": 3, "accuracy": 0.8}]
    assert [(p["predicted"], p["accuracy"]) for p in pareto_front(pts)] == [(1, 0.5), (3, 0.9)]


def test_sweep_writes_points_and_the_pareto_plot(tmp_path):
    out = run("sweep", "--model", "democnn", "--data", "mnist", "--subset", "300",
              "--budget-ratios", "0.4", "--uniform", "2,2", "--epochs", "1",
              "--a-bits", "2,3", "--w-bits", "1,2",
              "--batch-size", "64", "--retrain", "--out-dir", tmp_path)
    assert out.exit_code == 0, out.output
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    kinds = [p["kind"] for p in sweep["points"]]
    assert kinds == ["searched", "retrained", "uniform"]
    searched, retrained, uniform = sweep["points"]
    assert searched["predicted"] <= searched["budget"]
    # the retrained point is the searched configuration, trained the baseline's way
    assert retrained["predicted"] == pytest.approx(searched["predicted"])
    pairs = [[(l["a"], l["w"]) for l in json.loads((tmp_path / f).read_text())["layers"]]
             for f in (searched["file"], retrained["file"])]
    assert pairs[0] == pairs[1]
    # the sweep passes the separate activation and weight candidates to every search
    assert {a for a, _ in pairs[0]} <= {2, 3} and {w for _, w in pairs[0]} <= {1, 2}
    assert json.loads((tmp_path / retrained["file"]).read_text())["method"] == "fixed"
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "uniform-2x2.json").read_text())["layers"][0]["a"] == 2


def test_search_cli_takes_the_learning_rate(tmp_path):
    base = ["search", "--model", "democnn", "--data", "mnist", "--subset", "200",
            "--budget-ratio", "0.5", "--out", tmp_path / "s.json", "--quiet"]
    out = run(*base, "--lr", "0")
    assert out.exit_code == 2 and "--lr" in out.output
