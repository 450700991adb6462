"""One search run from names and paths to files: data, model, cost table, budget, the
search loop, the fine-tuned checkpoint and the result JSON. `mpqc search` and the
pipeline's search and finetune steps both call `search_to_files`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mpqc.errors import ConfigError


@dataclass(frozen=True)
class SearchRequest:
    model: str
    data: str
    out: Path                          # result JSON; .ckpt and .pt go beside it
    weights: str | None = None
    target: str = "host"
    cost: str | None = None            # "latency" | "bitops" (default: latency with a model)
    latency_model: str | None = None
    budget_ms: float | None = None
    budget_ratio: float | None = None
    bits: str = "1,2,3,4"
    a_bits: str | None = None          # activation candidates (default: bits)
    w_bits: str | None = None          # weight candidates (default: bits)
    uniform: tuple[int, int] | None = None
    fixed_config: str | None = None    # train this configuration (JSON file) instead
    subset: int | None = None
    threads: int = 1
    checkpoint: Path | None = None     # default: the result JSON's name + .ckpt
    glue_ms: float | None = None       # latency outside the searched layers; None: the
                                       # latency model's glue for the network (0 if none)
    kernel_scale: float = 1.0          # with glue_ms: the kernels' slowdown in the network


def checkpoint_path(request: SearchRequest) -> Path:
    out = Path(request.out)
    return Path(request.checkpoint) if request.checkpoint else out.with_name(out.name + ".ckpt")


def fp32_weights_path(out: Path) -> Path:
    return out.with_name(out.stem + ".fp32.pt")


def test_subset_size(subset: int) -> int:
    """Test images scored when training on `subset` images (a seeded random sample)."""
    return max(subset // 5, 256)


def _splits(data: str, subset: int | None, seed: int):
    from mpqc.data import load_dataset, subset as take
    splits = load_dataset(data)
    if subset:
        splits = type(splits)(**{**splits.__dict__, "train": take(splits.train, subset, seed),
                                 "val": take(splits.val, max(subset // 5, 64), seed),
                                 "test": take(splits.test, test_subset_size(subset), seed)})
    return splits


def bit_sets(bits: str, a_bits: str | None, w_bits: str | None):
    """(activation candidates, weight candidates): a_bits / w_bits, each else `bits`."""
    from mpqc.latency.space import parse_bits
    return parse_bits(a_bits or bits), parse_bits(w_bits or bits)


def candidate_sets(request: SearchRequest) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The activation and weight candidates (--a-bits / --w-bits, each defaulting to
    --bits), widened by those of a uniform or fixed configuration (the cost table must
    price it)."""
    from mpqc.latency.space import parse_bits
    a_set, w_set = map(set, bit_sets(request.bits, request.a_bits, request.w_bits))
    pairs = [tuple(request.uniform)] if request.uniform else []
    if request.fixed_config:
        pairs += list(_fixed_pairs(request.fixed_config).values())
    for a, w in pairs:
        a_set.add(a)
        w_set.add(w)
    return (parse_bits(",".join(map(str, sorted(a_set)))),
            parse_bits(",".join(map(str, sorted(w_set)))))


def candidate_bits(request: SearchRequest) -> tuple[int, ...]:
    """Every candidate bit-width, activations and weights together."""
    a_set, w_set = candidate_sets(request)
    return tuple(sorted(set(a_set) | set(w_set)))


def _fixed_pairs(text: str) -> dict:
    from mpqc.latency.network import config_file_pairs
    if text.startswith("uniform:"):
        raise ConfigError(f"{text!r}: a uniform baseline is --uniform A,W; a fixed "
                          "configuration is a JSON file")
    return config_file_pairs(text)


def cost_table(request: SearchRequest, layers, a_set, w_set, input_shape=None):
    """The cost table of `layers` at the activation and weight candidates."""
    from mpqc.search.objective import bitops_table, latency_cost_table
    cost = request.cost or ("latency" if request.latency_model else "bitops")
    if cost == "latency":
        if not request.latency_model:
            raise ConfigError("a latency cost needs a latency model (make one with `mpqc "
                              "measure` and `mpqc fit`), or use the bitops cost")
        from dataclasses import replace
        given = request.glue_ms is not None   # the caller measured the glue: not the model's
        table = latency_cost_table(request.latency_model, layers, a_set, w_set,
                                   request.threads, model_spec=None if given else request.model,
                                   input_shape=input_shape)
        return replace(table, offset=request.glue_ms,
                       cost=table.cost * request.kernel_scale) if given else table
    return bitops_table(layers, a_set, w_set)


def resolve_budget(request: SearchRequest, table) -> float:
    if (request.budget_ms is None) == (request.budget_ratio is None):
        raise ConfigError("give exactly one of a budget (ms) and a budget ratio")
    if request.budget_ratio is not None:
        if request.budget_ratio <= 0:
            raise ConfigError(f"budget ratio {request.budget_ratio} must be positive")
        return request.budget_ratio * table.uniform(max(table.a_bits), max(table.w_bits))
    return request.budget_ms


def search_to_files(request: SearchRequest, settings, world=None,
                    until: str = "finetune") -> dict | None:
    """Run (or resume) the search; with until="search" stop once the configuration is
    chosen (the checkpoint then holds everything the fine-tune needs). Writes request.out
    (and the fine-tuned checkpoint, .pt, after the fine-tune); returns the report, or None
    on a non-main rank of a distributed run."""
    from mpqc.models import build_model, describe_layers, load_weights
    from mpqc.quant.model import save_quantized
    from mpqc.search.loop import run_search
    from mpqc.targets import load_target

    target = load_target(request.target)
    candidates = candidate_sets(request)
    splits = _splits(request.data, request.subset, settings.seed)
    model = build_model(request.model, num_classes=splits.num_classes)
    if request.weights:
        load_weights(model, request.weights)
    table = cost_table(request, describe_layers(model, splits.input_shape), *candidates,
                       splits.input_shape)
    budget = resolve_budget(request, table)
    out = Path(request.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fixed = _fixed_pairs(request.fixed_config) if request.fixed_config else None
    result = run_search(model, splits, table, budget, settings, checkpoint_path(request),
                        request.uniform, pretrained=bool(request.weights), world=world,
                        until=until, fixed=fixed)
    qmodel = result.pop("model_q", None)
    if world is not None and not world.main:
        return None
    trained_fp32 = not request.weights or settings.fp32_finetune_epochs > 0
    if trained_fp32:  # the fp32 start the search trained: baselines can reuse it
        import torch
        torch.save(model.state_dict(), fp32_weights_path(out))
    report = {"budget_ms": result["budget"], "predicted_ms": result["predicted"],
              "cost_unit": result["cost_unit"], "method": result["method"],
              "target": target.name, "model": request.model, "data": request.data,
              "layers": [{"name": l["name"], "a": l["a"], "w": l["w"], "predicted_ms": l["cost"]}
                         for l in result["layers"]],
              "accuracy": result.get("accuracy"), "fp32_accuracy": result["fp32_accuracy"],
              "fp32_pretrained_accuracy": result["fp32_pretrained_accuracy"],
              "distill": settings.distill,
              "trajectory": result["trajectory"],
              "start_expected_cost": result["start_expected_cost"],
              "fixed_layers": result["fixed_layers"], "world_size": result["world_size"],
              "argmax": result["argmax"], "raised": result["raised"],
              "choice": result["choice"], "moves": result["moves"],
              "finetuned": qmodel is not None,
              "fp32_weights": str(fp32_weights_path(out)) if trained_fp32 else request.weights}
    if qmodel is not None:
        report["checkpoint"] = str(save_quantized(
            qmodel, out.with_suffix(".pt"),
            {"model": request.model, "num_classes": splits.num_classes,
             "input_shape": list(splits.input_shape)}))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    return report
