"""From the search's argmax to the configuration it returns, by measured loss.

The argmax of the strengths can land over the budget (E[T] sits at the budget while the
strengths are not exactly one-hot) or well under it. Moving it by the strengths alone
is blind where it matters: near one-hot, every other candidate has ~0 strength, so the
repair drops whatever saves most per step; at ResNet-20's 3-bit budget it took one
layer1 activation from 3 to 2 bits and cost 6 points before fine-tuning (argmax 77.1%,
repaired 71.0% on the test split). Here every one-step move (a or w of one layer to its
neighbouring candidate) is priced by the supernet's own loss on held-out batches with
the layer switched to the new pair and the others at the argmax; the greedy walk then
drops what costs least loss per ms saved until the budget holds, and raises only what
lowers the loss, best per ms added, while it stays within the budget.

Single-layer deviations from the argmax are evaluated once each and their loss changes
added (sensitivities are close to additive for one-step moves): a few dozen forward
passes in all instead of one per move and round.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mpqc.search.objective import CostTable, _cheapest_layers_until, _higher, _lower

Pair = tuple[int, int]
Loss = Callable[[dict], float]   # configuration -> loss on fixed held-out batches


def choose_by_loss(argmax: dict, table: CostTable, budget: float, loss: Loss,
                   raise_bits: bool = True) -> tuple[dict, list[dict]]:
    """(configuration within `budget`, the moves made in order: {layer, from, to,
    loss_change, cost_change})."""
    table.check_reachable(budget)
    argmax = dict(argmax)
    base = loss(argmax)
    single: dict[tuple[str, Pair], float] = {}

    def deviation(name: str, pair: Pair) -> float:
        """Loss of the argmax with one layer at `pair`, minus the argmax's."""
        if pair == argmax[name]:
            return 0.0
        if (name, pair) not in single:
            single[(name, pair)] = loss({**argmax, name: pair}) - base
        return single[(name, pair)]

    config, moves = dict(argmax), []
    while table.total(config) > budget:
        best = None
        for name, pair, d_cost in _moves(config, table, _lower):
            d_loss = deviation(name, pair) - deviation(name, config[name])
            # loss given up per ms saved; a drop that costs nothing goes first
            score = -d_cost / max(d_loss, 1e-4)
            if d_cost < 0 and (best is None or score > best[0]):
                best = (score, name, pair, d_loss, d_cost)
        if best is None:
            # a noisy latency table can be non-monotone (no one-step drop saves anything)
            config = _cheapest_layers_until(config, table, budget)
            moves.append({"layer": "*", "to": "cheapest pairs, largest saving first"})
            break
        moves.append(_apply(config, *best[1:]))
    while raise_bits:
        best = None
        for name, pair, d_cost in _moves(config, table, _higher):
            if table.total({**config, name: pair}) > budget:
                continue
            d_loss = deviation(name, pair) - deviation(name, config[name])
            score = -d_loss / max(d_cost, 1e-12)
            if d_loss < 0 and (best is None or score > best[0]):
                best = (score, name, pair, d_loss, d_cost)
        if best is None:
            break
        moves.append(_apply(config, *best[1:]))
    return config, moves


def _moves(config: dict, table: CostTable, step) -> list[tuple[str, Pair, float]]:
    """One-step moves of a or w in `step`'s direction, with their change of cost."""
    out = []
    for i, name in enumerate(table.names):
        a, w = config[name]
        for pair in ((step(table.a_bits, a), w), (a, step(table.w_bits, w))):
            if None not in pair:
                out.append((name, pair, table.at(i, pair) - table.at(i, (a, w))))
    return out


def _apply(config: dict, name: str, pair: Pair, d_loss: float, d_cost: float) -> dict:
    move = {"layer": name, "from": list(config[name]), "to": list(pair),
            "loss_change": round(d_loss, 5), "cost_change": d_cost}
    config[name] = pair
    return move


def supernet_loss(supernet, mixed: dict, batches: list) -> Loss:
    """Mean cross-entropy of the supernet in eval mode on `batches` with every mixed
    layer switched to one pair (one-hot strengths); the strengths are restored after.
    The same batches on every rank of a distributed search: all ranks choose alike."""
    count = sum(len(y) for _, y in batches)

    def loss(config: dict) -> float:
        saved = {n: (m.alpha.detach().clone(), m.beta.detach().clone())
                 for n, m in mixed.items()}
        training = supernet.training
        supernet.eval()
        try:
            with torch.no_grad():
                for n, m in mixed.items():
                    a, w = config[n]
                    m.beta.copy_(_one_hot_logits(m.a_candidates, a, m.beta))
                    m.alpha.copy_(_one_hot_logits(m.w_candidates, w, m.alpha))
                total = sum(float(F.cross_entropy(supernet(x), y, reduction="sum"))
                            for x, y in batches)
        finally:
            with torch.no_grad():
                for n, m in mixed.items():
                    m.alpha.copy_(saved[n][0])
                    m.beta.copy_(saved[n][1])
            supernet.train(training)
        return total / count
    return loss


def _one_hot_logits(candidates, bits: int, like: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is exactly one-hot at `bits` in float32 (exp(-1e4) is 0)."""
    out = torch.full_like(like, -1e4)
    out[list(candidates).index(bits)] = 0.0
    return out
