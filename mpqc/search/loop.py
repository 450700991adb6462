"""The search: fp32 start, EBS/BP-NAS supernet search, choice, fine-tune, evaluation.

Weight steps (meta weights, BN, quantizer steps; train split) alternate with strength
steps (alpha, beta; validation split), as both papers do. BP-NAS starts from strengths
inside the budget (a barrier method needs an interior start). Every epoch of every phase
is checkpointed; a rerun with the same arguments resumes from the last finished epoch.
Under torchrun each process trains on its shard of the data (mpqc.search.distributed).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mpqc.errors import ConfigError, ModelError, first_line
from mpqc.search.choice import choose_by_loss, supernet_loss
from mpqc.search.distributed import World, loader, replicas_agree, replicate, set_epoch
from mpqc.search.objective import (CostTable, barrier_penalty, expected_cost, feasible_start,
                                   prob1_regularizer, repair_to_budget, spend_slack)
from mpqc.supernet import is_mixed, make_supernet

METHODS = ("ebs", "bpnas")
CHOICES = ("loss", "strengths")
FINETUNE_STARTS = ("supernet", "fp32")


@dataclass
class SearchSettings:
    method: str = "bpnas"
    epochs: int = 2
    finetune_epochs: int = 1
    fp32_epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3             # search weights and fine-tuning (Adam)
    fp32_lr: float = 1e-2        # fp32 training from scratch (Adam, cosine)
    fp32_finetune_epochs: int = 0  # with pretrained weights: fine-tune fp32 on this data first
    fp32_finetune_lr: float = 1e-3
    distill: float = 0.0         # weight of the fp32 teacher's KL term in QAT (0: labels only)
    finetune_from: str = "supernet"  # the chosen config's QAT start: "supernet" or "fp32"
    strength_lr: float = 5e-2
    lam: float = 1.0             # EBS cost weight
    mu: float = 0.01             # BP-NAS barrier weight
    gamma_max: float = 0.05      # BP-NAS Prob-1 weight at the last step (annealed from 0)
    clip_k: float | None = 3.0   # scale-clip distribution reshaping (None: off)
    spend_slack: bool = True     # raise bits of the argmax while it stays within budget
    choice: str = "loss"         # argmax -> budget by the supernet's loss, or "strengths"
    choice_images: int = 2048    # validation images that price each move (choice="loss")
    margin: float = 0.0          # the chosen configuration stays under (1 - margin) x budget
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def key_fields(self) -> dict:
        """What decides the result (a checkpoint is reused only when these agree). The
        fields added after checkpoints existed count only when set, so that a checkpoint
        written before them still resumes."""
        fields = {k: v for k, v in self.__dict__.items() if k != "progress"}
        for name, default in (("fp32_finetune_epochs", 0), ("distill", 0.0),
                              ("finetune_from", "supernet")):
            if fields[name] == default:
                del fields[name]
        if not self.fp32_finetune_epochs:
            del fields["fp32_finetune_lr"]
        return fields


def _accuracy(model, dataset) -> float:
    from mpqc.evaluation import evaluate_accuracy
    with torch.no_grad():
        return evaluate_accuracy(model, dataset).accuracy


def _hits(logits, labels) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def training_loss(logits, labels, teacher=None, images=None, distill: float = 0.0):
    """Cross-entropy with the labels; with a teacher and distill > 0, mixed with the KL
    divergence from the teacher's output distribution (temperature 1): a low-bit network
    learns more from the fp32 network's soft targets than from the labels alone."""
    task = F.cross_entropy(logits, labels)
    if teacher is None or distill <= 0:
        return task
    with torch.no_grad():
        target = F.log_softmax(teacher(images), dim=1)
    kl = F.kl_div(F.log_softmax(logits, dim=1), target, log_target=True, reduction="batchmean")
    return (1 - distill) * task + distill * kl


def _teacher(model, settings):
    """The fp32 network in eval mode as the QAT phases' teacher, or None."""
    return model.eval() if settings.distill > 0 else None


def _train_epoch(model, data, opt, desc, progress, lr: float, epoch: int, epochs: int,
                 teacher=None, distill: float = 0.0):
    """One epoch of plain training; the learning rate follows a cosine from `lr` to 0
    over the phase, a function of the position only, so a resumed phase continues it."""
    model.train()
    bar = tqdm(data, desc=desc, leave=False, disable=not progress)
    total = max(epochs * len(data), 1)
    for i, (images, labels) in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * len(data) + i) / total))
        opt.zero_grad()
        logits = model(images)
        loss = training_loss(logits, labels, teacher, images, distill)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{_hits(logits, labels):.2%}")


class Checkpoint:
    """One file, rewritten atomically after every finished epoch (by rank 0 only)."""

    def __init__(self, path: Path, key: str, writer: bool = True):
        self.path, self.key, self.writer = path, key, writer

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
        if not self.writer:
            return
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


def _search_epochs(supernet, mixed, train, val, table, budget, settings, state, ckpt, world):
    """The alternating search; appends one trajectory entry per epoch to the state."""
    strengths = [p for m in mixed.values() for p in (m.alpha, m.beta)]
    weights = [p for n, p in supernet.named_parameters() if not n.endswith(("alpha", "beta"))]
    w_opt = torch.optim.Adam(weights, lr=settings.lr)
    s_opt = torch.optim.Adam(strengths, lr=settings.strength_lr)
    if "optim" in state:
        w_opt.load_state_dict(state["optim"]["weights"])
        s_opt.load_state_dict(state["optim"]["strengths"])
    net = replicate(supernet, world)
    for epoch in range(state["epoch"], settings.epochs):
        set_epoch((train, val), epoch)
        supernet.train()
        bar = tqdm(zip(train, val), total=min(len(train), len(val)),
                   desc=f"search epoch {epoch + 1}/{settings.epochs}", leave=False,
                   disable=not (settings.progress and world.main))
        peak, hits, steps = 0.0, 0.0, 0
        n_steps = min(len(train), len(val))
        for i, ((xt, yt), (xv, yv)) in enumerate(bar):
            # Prob-1 annealed from 0 at the first step to gamma_max at the last
            gamma = settings.gamma_max * (epoch * n_steps + i + 1) / (settings.epochs * n_steps)
            w_opt.zero_grad()
            F.cross_entropy(net(xt), yt).backward()
            w_opt.step()
            s_opt.zero_grad()
            logits = net(xv)
            task = F.cross_entropy(logits, yv)
            cost = expected_cost(mixed, table)
            if settings.method == "ebs":
                loss = task + settings.lam * cost / budget
            else:
                loss = task + barrier_penalty(cost, budget, settings.mu) \
                    + gamma * prob1_regularizer(mixed)
            loss.backward()
            before = [p.detach().clone() for p in strengths]
            s_opt.step()
            if settings.method == "bpnas" and cost.item() <= budget:
                _stay_inside(strengths, before, mixed, table, budget)
            peak = max(peak, cost.item())
            hits, steps = hits + _hits(logits, yv), steps + 1
            bar.set_postfix(loss=f"{task.item():.3f}", acc=f"{hits / steps:.2%}",
                            cost=f"{cost.item():.4g}/{budget:.4g} {table.unit}")
        with torch.no_grad():
            e_cost = float(expected_cost(mixed, table))
            prob1 = float(prob1_regularizer(mixed))
        state["history"].append({"epoch": epoch + 1, "expected_cost": e_cost,
                                 "max_expected_cost": max(peak, e_cost), "prob1": prob1,
                                 "val_accuracy": hits / max(steps, 1)})
        state.update(epoch=epoch + 1, supernet_state=supernet.state_dict(),
                     optim={"weights": w_opt.state_dict(), "strengths": s_opt.state_dict()})
        ckpt.save(state)


def _preferences(mixed, table) -> dict:
    """Each layer's strengths as probabilities over the table's a and w bit-widths."""
    prefs = {}
    with torch.no_grad():
        for n in table.names:
            q, p = mixed[n].probabilities()
            qa = dict(zip(mixed[n].a_candidates, q.tolist()))
            pw = dict(zip(mixed[n].w_candidates, p.tolist()))
            prefs[n] = ([qa.get(b, 0.0) for b in table.a_bits],
                        [pw.get(b, 0.0) for b in table.w_bits])
    return prefs


INWARD_TILT = 0.1   # of a projected step's length, along -grad E[T]


def _stay_inside(strengths, before, mixed, table, budget, halvings: int = 8) -> None:
    """Keep a strength step inside the budget (gradient projection + backtracking).

    Adam's normalised steps jump over a barrier however steep it is. A step that would
    carry E[T] across the budget loses its component along the gradient of E[T] (what
    raises the cost), so it moves along the budget surface: bits traded between layers,
    E[T] kept to first order (plus a slight inward tilt). Whatever still crosses is
    halved until it stays inside, or undone. Undoing alone froze the strengths once E[T]
    reached the budget: the task loss points every step outwards there."""
    if float(_cost_at(strengths, None, mixed, table)) <= budget:
        return
    with torch.no_grad():
        after = [p.detach().clone() for p in strengths]
        steps = [a - b for a, b in zip(after, before)]
        for p, b in zip(strengths, before):
            p.copy_(b)
    with torch.enable_grad():   # the gradient of E[T] where the step started
        grads = torch.autograd.grad(expected_cost(mixed, table), strengths, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(strengths, grads)]
    with torch.no_grad():
        norm2 = sum(float((g * g).sum()) for g in grads)
        along = sum(float((d * g).sum()) for d, g in zip(steps, grads))
        if norm2 > 0:
            # drop the outward part, then tilt inwards a little: E[T] is not linear in the
            # strengths, so a step exactly along the surface can still end outside it
            outward = max(along, 0.0) / norm2
            tangent = [d - outward * g for d, g in zip(steps, grads)]
            size = sum(float((t * t).sum()) for t in tangent) ** 0.5
            inward = INWARD_TILT * size / norm2 ** 0.5
            steps = [t - inward * g for t, g in zip(tangent, grads)]
        scale = 1.0
        for _ in range(halvings + 1):
            if float(_cost_at(strengths, [b + scale * d for b, d in zip(before, steps)],
                              mixed, table)) <= budget:
                return
            scale /= 2
        for p, b in zip(strengths, before):
            p.copy_(b)


def _cost_at(strengths, values, mixed, table) -> float:
    """E[T] with the strengths set to `values` (left there); None: as they are."""
    with torch.no_grad():
        if values is not None:
            for p, v in zip(strengths, values):
                p.copy_(v)
        return float(expected_cost(mixed, table))


def _choose(supernet, mixed, argmax, table, target, val, settings, progress):
    """The argmax moved into the budget (and, with spend_slack, up to it): by the
    supernet's loss on the validation split (choice.py), or by the strengths alone."""
    if settings.choice == "loss":
        from torch.utils.data import DataLoader
        batches = []
        for images, labels in DataLoader(val, batch_size=settings.batch_size):
            batches.append((images, labels))
            if sum(len(y) for _, y in batches) >= settings.choice_images:
                break
        loss = supernet_loss(supernet, mixed, batches)
        with tqdm(desc="choosing by loss", unit=" evaluations", leave=False,
                  disable=not progress) as bar:
            def counted(config):
                bar.update(1)
                return loss(config)
            return choose_by_loss(argmax, table, target, counted, settings.spend_slack)
    preference = _preferences(mixed, table)
    config = repair_to_budget(argmax, table, target, preference)
    moves = [{"layer": n, "from": list(argmax[n]), "to": list(config[n])}
             for n in table.names if config[n] != argmax[n]]
    if settings.spend_slack:
        config, raised = spend_slack(config, table, target, preference)
        moves += raised
    for move in moves:
        i = table.names.index(move["layer"])
        move["cost_change"] = table.at(i, move["to"]) - table.at(i, move["from"])
    return config, moves


def _baseline_epochs(model, config, calib, train, val, settings, state, ckpt, world):
    """The baseline's counterpart of the search: as many QAT steps, on the same train
    batches and learning rate, as the search gives the supernet's weights."""
    from mpqc.quant.model import quantize_model
    qmodel = quantize_model(model.eval(), config, calib=calib)
    if "qat_state" in state:
        qmodel.load_state_dict(state["qat_state"])
    opt = torch.optim.Adam(qmodel.parameters(), lr=settings.lr)
    if "optim" in state:
        opt.load_state_dict(state["optim"])
    net = replicate(qmodel, world)
    teacher = _teacher(model, settings)
    for epoch in range(state["epoch"], settings.epochs):
        set_epoch((train, val), epoch)
        qmodel.train()
        for (images, labels), _ in tqdm(zip(train, val), total=min(len(train), len(val)),
                                        desc=f"baseline epoch {epoch + 1}", leave=False,
                                        disable=not (settings.progress and world.main)):
            opt.zero_grad()
            training_loss(net(images), labels, teacher, images, settings.distill).backward()
            opt.step()
        state.update(epoch=epoch + 1, qat_state=qmodel.state_dict(), optim=opt.state_dict())
        ckpt.save(state)
    state["qat_state"] = qmodel.state_dict()


def _checked_fixed(fixed, table: CostTable) -> dict[str, tuple[int, int]]:
    """A fixed configuration covers exactly the table's layers, at pairs it can price."""
    from mpqc.schedules.spec import check_config
    config = check_config(dict(fixed), table.names, "fixed configuration")
    for name, (a, w) in config.items():
        if a not in table.a_bits or w not in table.w_bits:
            raise ConfigError(f"fixed configuration: layer {name} at a{a}w{w} is outside the "
                              f"candidate bit-widths (a {list(table.a_bits)}, w "
                              f"{list(table.w_bits)}): add them to --bits")
    return config


def run_search(model, splits, table: CostTable, budget: float, settings: SearchSettings,
               checkpoint_path: Path, uniform: tuple[int, int] | None = None,
               pretrained: bool = False, world: World | None = None,
               until: str = "finetune",
               fixed: Mapping[str, tuple[int, int]] | None = None) -> dict:
    """Search and fine-tune; returns the result dict. With `uniform` (one pair for every
    layer) or `fixed` (a pair per layer) no search runs: that configuration is trained
    with the search's schedule (a baseline; or a searched configuration retrained the
    way the baselines are). until="search" returns once the configuration is chosen and
    checkpointed (no `accuracy`, no `model_q`); a later call with until="finetune" goes
    on from there."""
    world = world or World()
    if until not in ("search", "finetune"):
        raise ConfigError(f"until={until!r}: 'search' or 'finetune'")
    if settings.method not in METHODS:
        raise ConfigError(f"method {settings.method!r} is not one of {METHODS}")
    if settings.choice not in CHOICES:
        raise ConfigError(f"choice {settings.choice!r} is not one of {CHOICES}")
    if settings.finetune_from not in FINETUNE_STARTS:
        raise ConfigError(f"finetune_from {settings.finetune_from!r} is not one of "
                          f"{FINETUNE_STARTS}")
    table.check_reachable(budget)
    if uniform is not None and fixed is not None:
        raise ConfigError("give a uniform pair or a fixed configuration, not both")
    baseline = ({n: tuple(uniform) for n in table.names} if uniform is not None
                else _checked_fixed(fixed, table) if fixed is not None else None)
    torch.manual_seed(settings.seed)
    # a uniform run keeps the key it always had; a fixed one adds its pairs
    key_baseline = uniform if fixed is None else ["fixed", *(baseline[n] for n in table.names)]
    ckpt = Checkpoint(checkpoint_path, settings_key(settings.key_fields(), budget, key_baseline,
                                                    table.names, table.a_bits, table.w_bits,
                                                    world.size), writer=world.main)
    state = ckpt.load() or {"phase": "fp32", "epoch": 0, "history": []}
    shape = splits.input_shape
    train = loader(splits.train, settings.batch_size, True, settings.seed, world)
    val = loader(splits.val, settings.batch_size, True, settings.seed + 1, world)
    progress = settings.progress and world.main

    # 1. fp32 start: trained from scratch, or pretrained weights fine-tuned on this data
    # (fp32_finetune_epochs; 0 keeps them as given); the QAT phases start from it and
    # its test accuracy is the reference the quantized one is compared with
    if "fp32_state" in state:
        model.load_state_dict(state["fp32_state"])
    if state["phase"] == "fp32":
        net = replicate(model, world)
        epochs = settings.fp32_finetune_epochs if pretrained else settings.fp32_epochs
        lr = settings.fp32_finetune_lr if pretrained else settings.fp32_lr
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        if "optim" in state:
            opt.load_state_dict(state["optim"])
        if pretrained and epochs and "fp32_pretrained_accuracy" not in state:
            state["fp32_pretrained_accuracy"] = _accuracy(model, splits.test)
        for epoch in range(state["epoch"], epochs):
            set_epoch((train,), epoch)
            _train_epoch(net, train, opt, f"fp32 epoch {epoch + 1}/{epochs}", progress, lr,
                         epoch, epochs)
            state.update(epoch=epoch + 1, fp32_state=model.state_dict(), optim=opt.state_dict())
            ckpt.save(state)
        state.pop("optim", None)
        state.update(phase="search", epoch=0, fp32_state=model.state_dict(),
                     fp32_accuracy=_accuracy(model, splits.test))
        ckpt.save(state)

    calib = next(iter(loader(splits.train, 64, False, 0, World())))[0]
    if baseline is None:
        supernet, report = make_supernet(model, table.w_bits, table.a_bits, shape, calib,
                                         clip_k=settings.clip_k)
        mixed = {n: m for n, m in supernet.named_modules() if is_mixed(m)}
        if "supernet_state" in state:
            supernet.load_state_dict(state["supernet_state"])
        elif state["phase"] == "search":
            state["start_expected_cost"] = (
                feasible_start(mixed, table, budget) if settings.method == "bpnas"
                else float(expected_cost(mixed, table)))
        if state["phase"] == "search":
            _search_epochs(supernet, mixed, train, val, table, budget, settings, state, ckpt,
                           world)
            argmax = {n: m.chosen() for n, m in mixed.items()}
            # the choice keeps the margin (a library measures within ~2% of its
            # prediction, either side); never below what the table can reach
            target = max(budget * (1 - settings.margin), table.minimum())
            config, moves = _choose(supernet, mixed, argmax, table, target, splits.val,
                                    settings, progress)
            if settings.finetune_from == "fp32":
                # the fp32 weights with steps calibrated for this configuration (as a
                # baseline starts), not the shared ones trained for every bit-width at once
                from mpqc.quant.model import quantize_model
                qmodel = quantize_model(model.eval(), config, calib=calib)
            else:
                qmodel = _quantized_from_supernet(model, supernet, config, shape)
            state.update(phase="finetune", epoch=0, config={n: list(v) for n, v in config.items()},
                         argmax={n: list(v) for n, v in argmax.items()}, moves=moves,
                         qat_state=qmodel.state_dict())
            state.pop("optim", None)
            ckpt.save(state)
        kept_8bit = [list(x) for x in report.fixed]
    else:
        if state["phase"] == "search":
            state["config"] = {n: list(v) for n, v in baseline.items()}
            _baseline_epochs(model, baseline, calib, train, val, settings, state, ckpt, world)
            state.pop("optim", None)
            state.update(phase="finetune", epoch=0)
            ckpt.save(state)
        kept_8bit = []

    config = {n: tuple(v) for n, v in state["config"].items()}
    moves = state.get("moves", [])   # the baseline's state has none
    layers = [{"name": n, "a": a, "w": w,
               "cost": table.at(i, (a, w))}
              for i, (n, (a, w)) in enumerate((n, config[n]) for n in table.names)]
    method = "uniform" if uniform is not None else "fixed" if fixed is not None else settings.method
    result = {"method": method, "budget": budget,
              "predicted": table.total(config), "cost_unit": table.unit, "layers": layers,
              "fp32_accuracy": state["fp32_accuracy"], "trajectory": state["history"],
              "fp32_pretrained_accuracy": state.get("fp32_pretrained_accuracy"),
              "start_expected_cost": state.get("start_expected_cost"), "fixed_layers": kept_8bit,
              "argmax": state.get("argmax"), "choice": settings.choice, "moves": moves,
              "raised": [m for m in moves if m.get("cost_change", 0) > 0],
              "world_size": world.size}
    if until == "search":
        return result

    # 3. fine-tune the chosen configuration (plain QAT) and evaluate it
    from mpqc.quant.model import quantize_model
    qmodel = quantize_model(model.eval(), config, input_shape=shape)
    qmodel.load_state_dict(state["qat_state"])
    net = replicate(qmodel, world)
    opt = torch.optim.Adam(qmodel.parameters(), lr=settings.lr)
    if "optim" in state:
        opt.load_state_dict(state["optim"])
    teacher = _teacher(model, settings)
    for epoch in range(state["epoch"], settings.finetune_epochs):
        set_epoch((train,), epoch)
        _train_epoch(net, train, opt, f"fine-tune epoch {epoch + 1}/{settings.finetune_epochs}",
                     progress, settings.lr, epoch, settings.finetune_epochs, teacher,
                     settings.distill)
        state.update(epoch=epoch + 1, qat_state=qmodel.state_dict(), optim=opt.state_dict())
        ckpt.save(state)
    if not replicas_agree(qmodel, world):
        raise ModelError("the data-parallel replicas ended with different weights")
    qmodel.eval()
    return {**result, "accuracy": _accuracy(qmodel, splits.test), "model_q": qmodel}
