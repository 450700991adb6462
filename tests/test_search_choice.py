"""The search's choice: the argmax moved into the budget by the supernet's measured loss
(mpqc.search.choice), not by strengths that are ~0 for every other candidate."""
import numpy as np
import pytest
import torch

from mpqc.errors import ConfigError
from mpqc.models import build_model
from mpqc.search import CostTable
from mpqc.search.choice import choose_by_loss, supernet_loss
from mpqc.supernet import is_mixed, make_supernet

NAMES = ("big", "small")
# a x w in (2, 4): "big" saves the most per drop
COST = np.array([[[6.0, 6.5], [8.0, 8.5]], [[1.0, 1.2], [2.0, 2.2]]])
TABLE = CostTable(NAMES, (2, 4), (2, 4), COST, "ms", offset=0.0)


def fake_loss(penalties: dict, calls: list):
    """Loss = 1 + the sum of each layer's penalty at its pair (additive by layer)."""
    def loss(config):
        calls.append(dict(config))
        return 1.0 + sum(penalties.get((n, tuple(p)), 0.0) for n, p in config.items())
    return loss


def test_the_drop_that_costs_least_loss_per_ms_goes_first():
    start = {"big": (4, 4), "small": (4, 4)}
    budget = TABLE.total(start) - 1.0          # one drop of "small"'s a is enough
    # "big" is sensitive: its cheaper pairs cost a lot of loss; "small" barely notices
    penalties = {("big", (2, 4)): 1.0, ("big", (4, 2)): 0.8,
                 ("small", (2, 4)): 0.01, ("small", (4, 2)): 0.3}
    calls = []
    config, moves = choose_by_loss(start, TABLE, budget, fake_loss(penalties, calls),
                                   raise_bits=False)
    assert config == {"big": (4, 4), "small": (2, 4)} and TABLE.total(config) <= budget
    assert [{**m, "cost_change": round(m["cost_change"], 9)} for m in moves] == [
        {"layer": "small", "from": [4, 4], "to": [2, 4], "loss_change": 0.01, "cost_change": -1.0}]
    # the argmax and each single-layer deviation are evaluated once
    assert len(calls) == 1 + 4


def test_raises_only_what_lowers_the_loss_within_the_budget():
    start = {"big": (2, 2), "small": (2, 2)}
    # raising small's w helps (1.0 per ms), big's a helps more in all (0.5 per ms) but
    # does not fit, the others hurt
    penalties = {("small", (2, 4)): -0.2, ("small", (4, 2)): 0.05,
                 ("big", (4, 2)): -1.0, ("big", (2, 4)): 0.1}
    budget = TABLE.total(start) + 0.5
    config, moves = choose_by_loss(start, TABLE, budget, fake_loss(penalties, []))
    assert config == {"big": (2, 2), "small": (2, 4)}
    assert [(m["layer"], m["to"]) for m in moves] == [("small", [2, 4])]
    assert moves[0]["cost_change"] == pytest.approx(0.2)
    # with the room, the better raise per ms comes first and both are taken
    config, moves = choose_by_loss(start, TABLE, TABLE.total(start) + 2.5,
                                   fake_loss(penalties, []))
    assert [m["layer"] for m in moves] == ["small", "big"]
    assert config == {"big": (4, 2), "small": (2, 4)}
    # --argmax-only: nothing is raised
    assert choose_by_loss(start, TABLE, budget, fake_loss(penalties, []),
                          raise_bits=False) == (start, [])


def test_budget_below_the_table_and_a_non_monotone_table():
    with pytest.raises(ConfigError, match="smallest achievable"):
        choose_by_loss({"big": (4, 4), "small": (4, 4)}, TABLE, TABLE.minimum() * 0.99,
                       fake_loss({}, []))
    cost = np.array([[[3.5, 2.0], [3.0, 5.0]]])   # (2,2) costs more than (4,2)
    table = CostTable(("l0",), (2, 4), (2, 4), cost, "ms", offset=0.0)
    config, _ = choose_by_loss({"l0": (4, 2)}, table, 2.6, fake_loss({}, []))
    assert config == {"l0": (2, 4)} and table.total(config) <= 2.6


def test_supernet_loss_switches_layers_one_hot_and_restores_the_strengths():
    torch.manual_seed(0)
    model = build_model("democnn").eval()
    net, _ = make_supernet(model, (2, 4), (2, 4), (1, 28, 28), calib=torch.randn(8, 1, 28, 28))
    mixed = {n: m for n, m in net.named_modules() if is_mixed(m)}
    net.train()
    before = {n: (m.alpha.clone(), m.beta.clone()) for n, m in mixed.items()}
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))]
    loss = supernet_loss(net, mixed, batches)
    low, high = ({n: (b, b) for n in mixed} for b in (2, 4))
    l_low, l_high = loss(low), loss(high)
    assert l_low != l_high and l_low == loss(low)   # deterministic, and the pairs matter
    for n, m in mixed.items():
        assert torch.equal(m.alpha, before[n][0]) and torch.equal(m.beta, before[n][1])
    assert net.training   # left as it was
    # the same as setting the strengths one-hot by hand
    with torch.no_grad():
        for m in mixed.values():
            m.alpha.copy_(torch.tensor([-1e4, 0.0]))
            m.beta.copy_(torch.tensor([-1e4, 0.0]))
        net.eval()
        x, y = batches[0]
        expected = float(torch.nn.functional.cross_entropy(net(x), y))
    assert l_high == pytest.approx(expected, rel=1e-6)
