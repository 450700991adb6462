"""The pipeline's last step: summary.json (the figures a user or a script checks),
report.md and its plots (Pareto front, bits per layer, latency per layer)."""
from __future__ import annotations

import json
from pathlib import Path

from mpqc.pipeline.config import PipelineConfig, Workspace


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def layer_latencies(search: dict, bench: dict) -> list[dict]:
    """Per searched layer: the latency the search counted (the latency table: measured
    kernels, predictions where none was measured) and the time of the library's kernels
    of the layer (bit-packing + convolution), each timed alone (Library.profile)."""
    profile = bench.get("profile") or {}
    rows = []
    for entry in search["layers"]:
        safe = entry["name"].replace(".", "_")
        parts = [profile.get(f"bitpack_{safe}"), profile.get(f"conv_{safe}")]
        rows.append({"name": entry["name"], "a": entry["a"], "w": entry["w"],
                     "predicted_ms": entry["predicted_ms"],
                     "measured_ms": sum(parts) if None not in parts else None})
    return rows


def collapse_warning(accuracy: float, classes: int) -> str | None:
    """A quantized network near chance accuracy has collapsed (seen: ResNet-20 with 1-bit
    activations everywhere): a library can be exact and in budget and still useless."""
    if classes > 1 and accuracy <= 1.5 / classes:
        return (f"accuracy {accuracy:.2%} is near chance ({classes} classes): the quantized "
                "network collapsed; a larger budget (more bits), more epochs or a lower --lr "
                "may recover it")
    return None


def accuracy_text(s: dict) -> str:
    """The summary's accuracies in one line: the fake-quant model's, the library's own
    where it was scored, and the fp32 reference's."""
    library = ""
    if s.get("library_accuracy") is not None:
        library = (f" (library {s['library_accuracy']:.2%} on {s['library_accuracy_images']}"
                   " test images)")
    given = ("" if s.get("fp32_pretrained_accuracy") is None else
             f" (fine-tuned on this data; {s['fp32_pretrained_accuracy']:.2%} as given)")
    return f"{s['accuracy']:.2%} quantized{library}, {s['fp32_accuracy']:.2%} fp32{given}"


def reference_name(same_run: dict) -> str:
    """What a same-run ratio divides by: a library of ours, or a peer model."""
    ref = same_run["reference"]
    return f"{ref} library" if "reference_library" in same_run else ref


def summarize(cfg: PipelineConfig, ws: Workspace) -> dict:
    finetune, search = _read(ws.finetune), _read(ws.search)
    glue = _read(ws.glue)
    verify, bench = _read(ws.verify), _read(ws.bench)
    scored = verify.get("library_accuracy") or {}   # absent when not scored
    manifest = _read(ws.manifest(cfg.model))
    measured = bench.get("mpqc_ms")
    budget = finetune["budget_ms"]
    failures, warnings = [], []
    if not verify["exact"]:
        failures.append(f"verification not exact: first differing op {verify['first_mismatch']}")
    same_run = bench.get("same_run")
    within_ms = None if measured is None else measured <= budget
    if measured is None:   # not a miss: the budget could not be checked here
        warnings.append("library latency not measured: " + bench.get("reason", "no timing"))
        within = None
    elif same_run:         # a ratio budget is checked as a ratio timed in one run
        within = same_run["within_budget"]
        if not within:
            failures.append(f"measured {same_run['ratio']:.3f}x the "
                            f"{reference_name(same_run)} in the same run: exceeds the budget "
                            f"ratio {same_run['budget_ratio']:g}")
        if not within_ms:
            warnings.append(f"measured {measured:.4f} ms is over the budget {budget:.4f} ms, "
                            f"yet {same_run['ratio']:.3f}x the {reference_name(same_run)} "
                            "timed alongside: this machine ran slower than when the budget "
                            "was set")
    else:
        within = within_ms
        if not within:
            failures.append(f"measured {measured:.4f} ms exceeds the budget {budget:.4f} ms")

    collapsed = collapse_warning(finetune["accuracy"], int(_read(ws.lowering)["output_shape"][-1]))
    if collapsed:
        warnings.append(collapsed)

    def ratio(peer):
        return bench[peer] / measured if measured and bench.get(peer) else None

    return {
        "ok": not failures, "failures": failures, "warnings": warnings,
        "model": cfg.model, "data": cfg.data, "target": manifest["target"]["name"],
        "threads": cfg.threads, "method": finetune["method"],
        "verified_exact": bool(verify["exact"]), "max_abs_diff": verify["max_abs_diff"],
        "measured_ms": measured, "predicted_ms": finetune["predicted_ms"], "budget_ms": budget,
        "predicted_glue_ms": glue["glue_ms"], "glue_measured": glue["measured"],
        "kernel_scale": glue.get("kernel_scale", 1.0),
        "within_budget": within, "within_budget_ms": within_ms,
        "budget_check": "same-run ratio" if same_run else "ms",
        "same_run": same_run,
        "accuracy": finetune["accuracy"], "fp32_accuracy": finetune["fp32_accuracy"],
        "fp32_pretrained_accuracy": finetune.get("fp32_pretrained_accuracy"),
        # the .so's own top-1 on the test split (None when not scored)
        "library_accuracy": scored.get("accuracy"),
        "library_accuracy_images": scored.get("images"),
        "torch_fp32_ms": bench.get("torch_fp32_ms"), "ort_fp32_ms": bench.get("ort_fp32_ms"),
        "ort_int8_ms": bench.get("ort_int8_ms"),
        "speedup_vs_torch_fp32": ratio("torch_fp32_ms"),
        "speedup_vs_ort_int8": ratio("ort_int8_ms"),
        "so_path": str(ws.library(cfg.model).resolve()),
        "manifest_path": str(ws.manifest(cfg.model).resolve()),
        "layers": [{"name": l["name"], "a": l["a"], "w": l["w"]} for l in finetune["layers"]],
        "search_trajectory": search["trajectory"],
    }


def _plots(cfg, ws, summary, points, per_layer) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpqc.search.plot import plot_pareto

    plot_pareto(points, "ms", str(ws.path("pareto.png")), f"{cfg.model}: searched vs uniform")
    names = [l["name"] for l in per_layer]
    _paired_bars(plt, names, ([l["a"] for l in per_layer], "activation bits"),
                 ([l["w"] for l in per_layer], "weight bits"),
                 "bits", "bits per layer", ws.path("bits.png"))
    _paired_bars(plt, names,
                 ([l["predicted_ms"] for l in per_layer], "predicted (search's table)"),
                 ([l["measured_ms"] or 0 for l in per_layer], "measured (library kernels, alone)"),
                 "ms", "latency per layer at its bits", ws.path("latency.png"))
    return ["pareto.png", "bits.png", "latency.png"]


def _fmt(value, spec=".4f", none="-"):
    return none if value is None else format(value, spec)


def _markdown(cfg, summary, per_layer, points, plots) -> str:
    s = summary
    lines = [f"# mpqc pipeline: {cfg.model} on {cfg.data}, target {s['target']}", "",
             "**" + ("OK" if s["ok"] else "FAILED: " + "; ".join(s["failures"])) + "**"
             + "".join(f"  \nWarning: {w}" for w in s["warnings"]), "",
             "| | |", "|---|---|",
             f"| verification | {'exact' if s['verified_exact'] else 'NOT exact'} "
             f"(logits max abs diff {s['max_abs_diff']:.3g}) |",
             f"| accuracy | {accuracy_text(s)} |",
             f"| latency | measured {_fmt(s['measured_ms'])} ms, predicted "
             f"{s['predicted_ms']:.4f} ms, budget {s['budget_ms']:.4f} ms |",
             *([f"| budget check | {s['same_run']['ratio']:.3f}x the "
                f"{reference_name(s['same_run'])} timed alongside, budget ratio "
                f"{s['same_run']['budget_ratio']:g}: "
                f"{'within' if s['same_run']['within_budget'] else 'OVER'} |"]
               if s.get("same_run") else []),
             f"| peers ({s['threads']} thread(s), same run) | torch fp32 "
             f"{_fmt(s['torch_fp32_ms'])} ms, onnxruntime fp32 {_fmt(s['ort_fp32_ms'])} ms, "
             f"onnxruntime int8 {_fmt(s['ort_int8_ms'])} ms |",
             f"| speedup | {_fmt(s['speedup_vs_torch_fp32'], '.2f')}x vs torch fp32, "
             f"{_fmt(s['speedup_vs_ort_int8'], '.2f')}x vs onnxruntime int8 |",
             f"| library | `{s['so_path']}` |", f"| manifest | `{s['manifest_path']}` |", "",
             "## Layers", "",
             "| layer | a | w | predicted ms | measured alone ms |", "|---|---|---|---|---|"]
    lines += [f"| {l['name']} | {l['a']} | {l['w']} | {l['predicted_ms']:.4f} | "
              f"{_fmt(l['measured_ms'])} |" for l in per_layer]
    kernels = sum(l["measured_ms"] or 0 for l in per_layer)
    alone = sum(l["predicted_ms"] for l in per_layer) / s["kernel_scale"]
    lines += ["", "Predicted: what the search counted for the layer (its kernels measured by "
              "the measure step, or the latency model's prediction, times "
              f"{s['kernel_scale']:.3f}: the kernels' measured slowdown inside the network, "
              "glue.json). Measured: the layer's "
              "bit-packing and convolution kernels of the library, each timed alone "
              "(median of the benchmark's repeats), as the measure step times them."
              + (f" The library took {s['measured_ms'] - kernels:.4f} ms more than its "
                 "searched layers timed alone (8-bit first/last layers, pooling, glue, the "
                 "VM, and the layers' slowdown inside the network); the prediction counted "
                 f"{s['predicted_ms'] - alone:.4f} ms more than its layers alone." \
                 if s["measured_ms"] else ""), "",
              "## Accuracy against predicted latency", "",
              "| run | predicted ms | accuracy |", "|---|---|---|"]
    lines += [f"| {p['label']} | {p['predicted']:.4f} | {p['accuracy']:.2%} |" for p in points]
    lines += [""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write_report(cfg: PipelineConfig, ws: Workspace) -> dict:
    summary = summarize(cfg, ws)
    finetune = _read(ws.finetune)
    per_layer = layer_latencies(finetune, _read(ws.bench))
    points = [{"label": f"searched ({finetune['method']})", "kind": "searched",
               "predicted": finetune["predicted_ms"], "accuracy": finetune["accuracy"]}]
    points += _read(ws.baselines)["points"]
    summary["pareto"] = points
    summary["layer_latency"] = per_layer
    plots = _plots(cfg, ws, summary, points, per_layer)
    tmp = ws.summary.with_name(ws.summary.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(ws.summary)
    ws.report.write_text(_markdown(cfg, summary, per_layer, points, plots))
    return summary


def _paired_bars(plt, names, left, right, ylabel: str, title: str, path) -> None:
    """Two bars per layer, (values, label) each, side by side."""
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.5 * len(names)), 3.6))
    for shift, (values, label) in ((-0.2, left), (0.2, right)):
        ax.bar([i + shift for i in x], values, 0.4, label=label)
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
