"""The search objective (methods.md, "our formulation" where the papers leave it open).

- E[T] = sum_l sum_{a,w} q_{l,a} p_{l,w} T_l(a, w), T a cost table (ms from the latency
  model of the target, or BitOPs);
- EBS: task loss + lambda * E[T] / budget;
- BP-NAS: task loss + B(E[T]) + gamma * R, with the soft barrier
  B(C) = -mu * log(1 - C / budget) for C <= (1 - eps) * budget, continued by its tangent
  beyond (finite and steep for an infeasible start), and the Prob-1 regularizer
  R = sum_l (1 - sum_k p_{l,k}^2) + (1 - sum_k q_{l,k}^2), which is zero exactly when
  every strength vector is one-hot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mpqc.errors import ConfigError


@dataclass(frozen=True)
class CostTable:
    names: tuple[str, ...]
    a_bits: tuple[int, ...]
    w_bits: tuple[int, ...]
    cost: np.ndarray          # [layer, a index, w index]
    unit: str                 # "ms" or "GBitOPs"
    offset: float = 0.0       # what the rest of the network costs whatever the bits (glue)

    def at(self, layer: int, pair) -> float:
        """The cost of layer number `layer` at (a, w)."""
        return float(self.cost[layer, self.a_bits.index(pair[0]), self.w_bits.index(pair[1])])

    def total(self, config: dict[str, tuple[int, int]]) -> float:
        return self.offset + sum(self.at(i, config[n]) for i, n in enumerate(self.names))

    def minimum(self) -> float:
        return self.offset + float(self.cost.min(axis=(1, 2)).sum())

    def uniform(self, a: int, w: int) -> float:
        return self.total({n: (a, w) for n in self.names})

    def check_reachable(self, budget: float) -> None:
        """A budget no configuration meets is an error that names the smallest one."""
        if self.minimum() > budget:
            raise ConfigError(f"budget {budget:.4g} {self.unit} is below the smallest "
                              f"achievable {self.minimum():.4g} {self.unit} (every layer at "
                              "its cheapest pair); raise the budget")


def bitops_table(layers, a_bits, w_bits) -> CostTable:
    chosen = [l for l in layers if l.quantizable]
    cost = np.array([[[l.macs * a * w / 1e9 for w in w_bits] for a in a_bits] for l in chosen])
    return CostTable(tuple(l.name for l in chosen), tuple(a_bits), tuple(w_bits), cost, "GBitOPs")


def latency_cost_table(model_file, layers, a_bits, w_bits, threads: int = 1,
                       model_spec: str | None = None, input_shape=None) -> CostTable:
    """The predicted-latency table of a fitted latency model (mpqc.latency, imported
    only here: the search itself knows nothing of how the table was made). With
    `model_spec` (and `input_shape` for a model that is not built in) the offset is the
    network's glue the model holds, 0 when it holds none."""
    try:
        from mpqc.latency.table import latency_table
    except ImportError as exc:
        raise ConfigError(f"latency tables are not available in this installation "
                          f"({exc}); use --cost bitops") from exc
    names, ms = latency_table(model_file, layers, a_bits, w_bits, threads)
    ms = np.asarray(ms, dtype=float)
    if ms.shape != (len(names), len(a_bits), len(w_bits)) or not np.isfinite(ms).all() \
            or (ms <= 0).any():
        raise ConfigError(f"latency model {model_file} gave an unusable table (shape "
                          f"{ms.shape}, expected {(len(names), len(a_bits), len(w_bits))}, "
                          "positive finite entries)")
    offset, scale = _glue(model_file, model_spec, input_shape, threads) if model_spec \
        else (0.0, 1.0)
    return CostTable(tuple(names), tuple(a_bits), tuple(w_bits), ms * scale, "ms", offset)


def _glue(model_file, model_spec: str, input_shape, threads: int) -> tuple[float, float]:
    """(glue ms, kernel scale) the model measured for the network ((0, 1) if never):
    each layer then costs what it costs inside the network."""
    from mpqc.latency.glue_db import resolve_input_shape
    from mpqc.latency.predictor import LatencyModel
    model = LatencyModel.load(model_file)
    shape = resolve_input_shape(model_spec, input_shape)
    return float(model.glue_ms(model_spec, shape, threads) or 0.0), \
        model.kernel_scale(model_spec, shape, threads)


def expected_cost(mixed_layers: dict, table: CostTable) -> torch.Tensor:
    total = table.offset
    for i, name in enumerate(table.names):
        q, p = mixed_layers[name].probabilities()
        total = total + q @ torch.as_tensor(table.cost[i], dtype=q.dtype) @ p
    return total


def barrier_penalty(cost: torch.Tensor, budget: float, mu: float = 1.0, eps: float = 0.02):
    ratio = cost / budget
    edge = 1.0 - eps
    inside = -mu * torch.log(torch.clamp(1.0 - ratio, min=eps))
    tangent = -mu * np.log(eps) + mu / eps * (ratio - edge)
    return torch.where(ratio <= edge, inside, tangent)


def prob1_regularizer(mixed_layers: dict) -> torch.Tensor:
    total = 0.0
    for layer in mixed_layers.values():
        q, p = layer.probabilities()
        total = total + (1 - (p * p).sum()) + (1 - (q * q).sum())
    return total


def repair_to_budget(config: dict, table: CostTable, budget: float,
                     preference: dict[str, tuple[list[float], list[float]]] | None = None
                     ) -> dict:
    """Lower bits one step at a time until the configuration meets the budget; the
    argmax of a search can land outside it, and a returned configuration must never.

    Each round takes the one-step drop (a or w of one layer to its next lower candidate)
    that gives up least of what the strengths want per unit of cost saved: the strength
    mass at or above the current bit-width over the saving (the mirror of spend_slack).
    Without `preference` every drop counts the same and the largest saving goes first,
    which at ResNet-20's expensive 16-channel layers walks one layer's activations down
    to 1 bit while the strengths of the others barely wanted their top bits."""
    table.check_reachable(budget)
    config = dict(config)
    while table.total(config) > budget:
        best = None
        for i, n in enumerate(table.names):
            a, w = config[n]
            here = table.at(i, (a, w))
            for axis, bits in (("a", table.a_bits), ("w", table.w_bits)):
                down = _lower(bits, a if axis == "a" else w)
                if down is None:
                    continue
                cand = (down, w) if axis == "a" else (a, down)
                saving = here - table.at(i, cand)
                if preference is None:
                    loss = 1.0
                else:
                    probs = preference[n][0 if axis == "a" else 1]
                    current = a if axis == "a" else w
                    loss = sum(pr for b, pr in zip(bits, probs) if b >= current)
                score = saving / max(loss, 1e-6)
                if saving > 0 and (best is None or score > best[0]):
                    best = (score, n, cand)
        if best is None:
            # a noisy latency table can be non-monotone (no one-step drop saves anything):
            # move whole layers to their cheapest pair, largest saving first
            return _cheapest_layers_until(config, table, budget)
        config[best[1]] = best[2]
    return config


def _cheapest_layers_until(config: dict, table: CostTable, budget: float) -> dict:
    config = dict(config)
    moves = []
    for i, n in enumerate(table.names):
        a, w = config[n]
        ia, iw = np.unravel_index(np.argmin(table.cost[i]), table.cost[i].shape)
        here = table.at(i, (a, w))
        moves.append((here - table.cost[i, ia, iw], n, (table.a_bits[ia], table.w_bits[iw])))
    for _, n, cheapest in sorted(moves, reverse=True):
        if table.total(config) <= budget:
            break
        config[n] = cheapest
    return config


def spend_slack(config: dict, table: CostTable, budget: float,
                preference: dict[str, tuple[list[float], list[float]]]) -> tuple[dict, list]:
    """Raise bits while the configuration stays within the budget.

    The argmax of strengths that are not yet one-hot can cost far less than the budget
    (E[T] at the budget, every argmax at the cheapest pair). Each round takes the one-step
    raise (a or w of one layer to its next candidate) that the strengths want most per
    unit of cost: the strength mass at or above the new bit-width over the added cost.
    `preference[name]` is (q over table.a_bits, p over table.w_bits). Returns the new
    configuration and the raises made, in order."""
    config, raised = dict(config), []
    while True:
        best = None
        for i, n in enumerate(table.names):
            a, w = config[n]
            q, p = preference[n]
            here = table.at(i, (a, w))
            for axis, bits, probs in (("a", table.a_bits, q), ("w", table.w_bits, p)):
                up = _higher(bits, a if axis == "a" else w)
                if up is None:
                    continue
                cand = (up, w) if axis == "a" else (a, up)
                extra = table.at(i, cand) - here
                if table.total({**config, n: cand}) > budget:
                    continue
                want = sum(pr for b, pr in zip(bits, probs) if b >= up)
                score = want / max(extra, 1e-12)
                if best is None or score > best[0]:
                    best = (score, n, cand)
        if best is None:
            return config, raised
        _, n, cand = best
        raised.append({"layer": n, "from": list(config[n]), "to": list(cand)})
        config[n] = cand


def _lower(bits: tuple[int, ...], b: int):
    smaller = [x for x in bits if x < b]
    return max(smaller) if smaller else None


def _higher(bits: tuple[int, ...], b: int):
    larger = [x for x in bits if x > b]
    return min(larger) if larger else None


def feasible_start(mixed_layers: dict, table: CostTable, budget: float,
                   target: float = 0.85) -> float:
    """Tilt the strengths towards cheap candidates until E[T] is at most the goal
    min + target * (budget - min), min the cheapest configuration's cost.

    A barrier method needs an interior starting point (BP-NAS searches inside the
    feasible domain); uniform strengths average the whole table and can lie outside a
    tight budget. The goal lies strictly between the minimum and the budget: a goal at
    or below the minimum would saturate the softmax on the cheapest pair, where the
    strengths get no gradient and the search cannot move. Logits become -tau * (the
    candidate's mean cost in the layer, relative to the layer's largest), tau found by
    bisection; nothing changes when the uniform start is already inside. Returns the
    E[T] the search starts from."""
    layers = [(mixed_layers[n], table.cost[i] / max(float(table.cost[i].max()), 1e-30))
              for i, n in enumerate(table.names)]

    def tilt(tau: float) -> float:
        with torch.no_grad():
            for layer, cost in layers:
                layer.beta.copy_(torch.as_tensor(-tau * cost.mean(axis=1), dtype=layer.beta.dtype))
                layer.alpha.copy_(torch.as_tensor(-tau * cost.mean(axis=0), dtype=layer.alpha.dtype))
            return float(expected_cost(mixed_layers, table))

    floor = table.minimum()
    goal = floor + target * (budget - floor)
    start = tilt(0.0)
    if start <= goal:
        return start
    lo, hi = 0.0, 1.0
    while tilt(hi) > goal and hi < 1e4:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if tilt(mid) <= goal else (mid, hi)
    return tilt(hi)
