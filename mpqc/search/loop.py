"""The search: fp32 start, EBS/BP-NAS supernet search, choice, fine-tune, evaluation.

Weight steps (meta weights, BN, quantizer steps; train split) alternate with strength
steps (alpha, beta; validation split), as both papers do. Every epoch of every phase is
checkpointed; a rerun with the same arguments resumes from the last finished epoch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from mpqc.errors import ConfigError, ModelError, first_line
from mpqc.search.objective import (CostTable, barrier_penalty, expected_cost,
                                   prob1_regularizer, repair_to_budget)
from mpqc.supernet import is_mixed, make_supernet

METHODS = ("ebs", "bpnas")


@dataclass
class SearchSettings:
    method: str = "bpnas"
    epochs: int = 2
    finetune_epochs: int = 1
    fp32_epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    strength_lr: float = 5e-2
    lam: float = 1.0             # EBS cost weight
    mu: float = 0.05             # BP-NAS barrier weight
    gamma_max: float = 0.5       # BP-NAS Prob-1 weight at the last epoch (annealed from 0)
    clip_k: float | None = 3.0   # scale-clip distribution reshaping (None: off)
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _loader(dataset, batch_size, shuffle, seed):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g)


def _accuracy(model, dataset) -> float:
    from mpqc.evaluation import evaluate_accuracy
    return evaluate_accuracy(model, dataset).accuracy


def _train_epoch(model, loader, opt, desc, progress):
    model.train()
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()


class Checkpoint:
    """One file, rewritten atomically after every finished epoch."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"search checkpoint {self.path} is corrupt ({first_line(exc)}); "
                             "delete it to start over") from exc
        if not isinstance(state, dict) or state.get("key") != self.key:
            raise ConfigError(f"search checkpoint {self.path} belongs to another search "
                              "(different arguments); delete it or choose another --out")
        return state

    def save(self, state: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**state, "key": self.key}, tmp)
        tmp.replace(self.path)


def settings_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _quantized_from_supernet(model, supernet, config, input_shape):
    """The fake-quant model of `config` that starts where the supernet ended: its meta
    weights (scale-clipped), BN statistics, fixed layers, and for each searched layer the
    steps of the chosen candidates. Recalibrating from a float forward instead would
    see activations the supernet never produced (its quantizers clip them)."""
    from mpqc.quant.model import quantize_model
    qmodel = quantize_model(model.eval(), config, input_shape=input_shape)
    mine = qmodel.state_dict()
    qmodel.load_state_dict({k: v for k, v in supernet.state_dict().items()
                            if k in mine and v.shape == mine[k].shape}, strict=False)
    with torch.no_grad():
        for name, m in supernet.named_modules():
            if is_mixed(m):
                q = qmodel.get_submodule(name)
                q.weight.copy_(m._reshaped(m.weight))
                q.a_step.fill_(float(m.a_steps[m.a_candidates.index(q.a_bits)]))
                q.w_step.fill_(float(m.w_steps[m.w_candidates.index(q.w_bits)]))
    return qmodel


def run_search(model, splits, table: CostTable, budget: float, settings: SearchSettings,
               checkpoint_path: Path, uniform: tuple[int, int] | None = None,
               pretrained: bool = False) -> dict:
    """Search (or train a uniform baseline) and fine-tune; returns the result dict."""
    if settings.method not in METHODS:
        raise ConfigError(f"method {settings.method!r} is not one of {METHODS}")
    if table.minimum() > budget:
        raise ConfigError(f"budget {budget:.4g} {table.unit} is below the smallest achievable "
                          f"{table.minimum():.4g} {table.unit}; raise the budget")
    torch.manual_seed(settings.seed)
    ckpt = Checkpoint(checkpoint_path, settings_key(settings.__dict__, budget, uniform,
                                                    table.names, table.a_bits, table.w_bits))
    state = ckpt.load() or {"phase": "fp32", "epoch": 0, "history": []}
    shape = splits.input_shape
    train = _loader(splits.train, settings.batch_size, True, settings.seed)
    val = _loader(splits.val, settings.batch_size, True, settings.seed + 1)

    # 1. fp32 start (skipped with pretrained weights)
    if "fp32_state" in state:
        model.load_state_dict(state["fp32_state"])
    if state["phase"] == "fp32":
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        for epoch in range(state["epoch"], 0 if pretrained else settings.fp32_epochs):
            _train_epoch(model, train, opt, f"fp32 epoch {epoch + 1}", settings.progress)
            state.update(epoch=epoch + 1, fp32_state=model.state_dict())
            ckpt.save(state)
        state.update(phase="search", epoch=0, fp32_state=model.state_dict(),
                     fp32_accuracy=_accuracy(model, splits.test))
        ckpt.save(state)

    calib = next(iter(_loader(splits.train, 64, False, 0)))[0]
    if uniform is None:
        supernet, report = make_supernet(model, table.w_bits, table.a_bits, shape, calib,
                                         clip_k=settings.clip_k)
        mixed = {n: m for n, m in supernet.named_modules() if is_mixed(m)}
        if "supernet_state" in state:
            supernet.load_state_dict(state["supernet_state"])
        strengths = [p for m in mixed.values() for p in (m.alpha, m.beta)]
        weights = [p for n, p in supernet.named_parameters()
                   if not n.endswith(("alpha", "beta"))]
        w_opt = torch.optim.Adam(weights, lr=settings.lr)
        s_opt = torch.optim.Adam(strengths, lr=settings.strength_lr)
        if state["phase"] == "search":
            for epoch in range(state["epoch"], settings.epochs):
                gamma = settings.gamma_max * (epoch + 1) / settings.epochs
                supernet.train()
                bar = tqdm(zip(train, val), total=min(len(train), len(val)),
                           desc=f"search epoch {epoch + 1}/{settings.epochs}", leave=False,
                           disable=not settings.progress)
                for (xt, yt), (xv, yv) in bar:
                    w_opt.zero_grad()
                    F.cross_entropy(supernet(xt), yt).backward()
                    w_opt.step()
                    s_opt.zero_grad()
                    task = F.cross_entropy(supernet(xv), yv)
                    cost = expected_cost(mixed, table)
                    if settings.method == "ebs":
                        loss = task + settings.lam * cost / budget
                    else:
                        loss = task + barrier_penalty(cost, budget, settings.mu) \
                            + gamma * prob1_regularizer(mixed)
                    loss.backward()
                    s_opt.step()
                    bar.set_postfix(loss=f"{task.item():.3f}",
                                    cost=f"{cost.item():.4g}/{budget:.4g} {table.unit}")
                with torch.no_grad():
                    e_cost = float(expected_cost(mixed, table))
                    prob1 = float(prob1_regularizer(mixed))
                state["history"].append({"epoch": epoch + 1, "expected_cost": e_cost,
                                         "prob1": prob1})
                state.update(epoch=epoch + 1, supernet_state=supernet.state_dict())
                ckpt.save(state)
            argmax = {n: m.chosen() for n, m in mixed.items()}
            config = repair_to_budget(argmax, table, budget)
            qmodel = _quantized_from_supernet(model, supernet, config, shape)
            state.update(phase="finetune", epoch=0, config={n: list(v) for n, v in config.items()},
                         argmax={n: list(v) for n, v in argmax.items()},
                         qat_state=qmodel.state_dict())
            ckpt.save(state)
        fixed = [list(x) for x in report.fixed]
    else:
        if state["phase"] == "search":
            from mpqc.quant.model import quantize_model
            config = {n: tuple(uniform) for n in table.names}
            qmodel = quantize_model(model.eval(), config, calib=calib)
            state.update(phase="finetune", epoch=0, config={n: list(v) for n, v in config.items()},
                         qat_state=qmodel.state_dict())
            ckpt.save(state)
        fixed = []

    # 3. fine-tune the chosen configuration (plain QAT) and evaluate it
    from mpqc.quant.model import quantize_model
    config = {n: tuple(v) for n, v in state["config"].items()}
    qmodel = quantize_model(model.eval(), config, input_shape=shape)
    qmodel.load_state_dict(state["qat_state"])
    opt = torch.optim.Adam(qmodel.parameters(), lr=settings.lr)
    for epoch in range(state["epoch"], settings.finetune_epochs):
        _train_epoch(qmodel, train, opt, f"fine-tune epoch {epoch + 1}", settings.progress)
        state.update(epoch=epoch + 1, qat_state=qmodel.state_dict())
        ckpt.save(state)
    qmodel.eval()
    layers = [{"name": n, "a": a, "w": w,
               "cost": float(table.cost[i, table.a_bits.index(a), table.w_bits.index(w)])}
              for i, (n, (a, w)) in enumerate((n, config[n]) for n in table.names)]
    return {"method": "uniform" if uniform else settings.method, "budget": budget,
            "predicted": table.total(config), "cost_unit": table.unit, "layers": layers,
            "accuracy": _accuracy(qmodel, splits.test), "fp32_accuracy": state["fp32_accuracy"],
            "trajectory": state["history"], "fixed_layers": fixed,
            "argmax": state.get("argmax"), "model_q": qmodel}
