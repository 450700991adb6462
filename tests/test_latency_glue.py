"""Glue (what is not bit-serial) measured on a compiled network, and a cost table that
carries it: budgets then hold for the whole network."""
from dataclasses import replace

import pytest
import torch

from mpqc.errors import ConfigError
from mpqc.latency.glue import measure_glue
from mpqc.models import build_model, describe_layers
from mpqc.search.objective import bitops_table, expected_cost, repair_to_budget
from mpqc.supernet import is_mixed, make_supernet
from mpqc.targets import load_target


def _table(offset=0.0):
    layers = describe_layers(build_model("democnn"), (1, 28, 28))
    return replace(bitops_table(layers, (1, 2, 4), (1, 2, 4)), offset=offset)


def test_the_offset_is_in_every_total_and_in_the_expected_cost():
    plain, glued = _table(), _table(0.5)
    config = {n: (2, 1) for n in plain.names}
    assert glued.total(config) == pytest.approx(plain.total(config) + 0.5)
    assert glued.minimum() == pytest.approx(plain.minimum() + 0.5)
    assert glued.uniform(4, 4) == pytest.approx(plain.uniform(4, 4) + 0.5)
    torch.manual_seed(0)
    supernet, _ = make_supernet(build_model("democnn"), (1, 2, 4), (1, 2, 4), (1, 28, 28),
                                torch.randn(8, 1, 28, 28))
    mixed = {n: m for n, m in supernet.named_modules() if is_mixed(m)}
    with torch.no_grad():
        assert expected_cost(mixed, glued).item() == pytest.approx(
            expected_cost(mixed, plain).item() + 0.5)


def test_repair_meets_a_budget_that_includes_the_offset():
    glued = _table(0.3)
    budget = glued.offset + 0.5 * (glued.uniform(4, 4) - glued.offset)
    config = repair_to_budget({n: (4, 4) for n in glued.names}, glued, budget)
    assert glued.total(config) <= budget
    # without the offset the same budget would have allowed more bits
    assert _table().total(repair_to_budget({n: (4, 4) for n in glued.names}, _table(), budget)) \
        > glued.total(config) - glued.offset
    with pytest.raises(ConfigError, match="below the smallest achievable"):
        repair_to_budget(config, glued, glued.minimum() - 1e-3)


def test_glue_is_timed_at_the_two_smallest_and_the_largest_uniform_pair():
    from mpqc.latency.glue_db import glue_pairs
    assert glue_pairs((1, 2, 3, 4), (1, 2, 3, 4)) == ((1, 1), (2, 2), (4, 4))
    assert glue_pairs((4, 2, 3), (8, 2)) == ((2, 2), (3, 8), (4, 8))
    assert glue_pairs((1, 2), (1, 2)) == ((1, 1), (2, 2))
    assert glue_pairs((2,), (3,)) == ((2, 3),)


def test_network_fit_is_a_line_through_the_uniform_points():
    from mpqc.latency.glue import GluePoint, network_fit
    # the numbers of a ResNet-20 measurement: kernels 4.4% slower in the network
    line = [GluePoint(a, a, 1.044 * k + 0.0444, k) for a, k in ((1, 0.0946), (2, 0.2942),
                                                                (4, 1.1)) ]
    scale, glue = network_fit(line)
    assert scale == pytest.approx(1.044) and glue == pytest.approx(0.0444)
    # one point, or points too close to tell a slope: plain glue
    assert network_fit(line[:1]) == pytest.approx((1.0, 1.044 * 0.0946 + 0.0444 - 0.0946))
    assert network_fit([GluePoint(1, 1, 0.15, 0.1), GluePoint(2, 2, 0.151, 0.1001)])[0] == 1.0
    # noise cannot make the network faster than its kernels, nor glue negative
    assert network_fit([GluePoint(1, 1, 0.2, 0.1), GluePoint(4, 4, 0.9, 1.0)]) == \
        pytest.approx((1.0, 0.0))
    assert network_fit([GluePoint(1, 1, 0.1, 0.1), GluePoint(4, 4, 3.0, 1.0)])[0] == 1.25


def test_glue_is_the_library_minus_its_kernels_at_two_uniform_pairs():
    model = build_model("democnn")
    layers = describe_layers(model, (1, 28, 28))
    glue = measure_glue("democnn", layers, (1, 28, 28), load_target("host"), threads=1,
                        repeats=5, pairs=((1, 1), (2, 2)))
    assert [(p.a_bits, p.w_bits) for p in glue.points] == [(1, 1), (2, 2)]
    for p in glue.points:
        assert p.library_ms > 0 and p.kernels_ms > 0
        assert p.glue_ms == pytest.approx(p.library_ms - p.kernels_ms)
    # kernels of more bits cost more; the library holds them all
    assert glue.points[1].kernels_ms > glue.points[0].kernels_ms
    row = glue.to_json()
    from mpqc.latency.glue import network_fit
    assert (row["kernel_scale"], row["glue_ms"]) == network_fit(glue.points)
    assert {"model", "target", "threads", "timestamp"} <= set(row)
