"""The pipeline's steps, in order (docs/ARCHITECTURE.md): import, measure, fit, search,
finetune, baselines, lower, build, verify, bench, report. Each reads the artifacts of
earlier steps from the workdir and writes its own there.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mpqc.errors import ConfigError, DeviceError
from mpqc.pipeline.config import PipelineConfig, Workspace
from mpqc.pipeline.runner import Step


ROUNDS = 7  # alternating timing rounds of a same-run budget check


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _target(cfg):
    from mpqc.targets import load_target
    return load_target(cfg.target)


def _device(cfg):
    """The RPC device of --rpc-tracker/--rpc-key, or None for this machine."""
    if cfg.rpc_tracker is None:
        if cfg.rpc_key is not None:
            raise ConfigError("--rpc-key needs --rpc-tracker HOST:PORT")
        return None
    from mpqc.remote import RpcDevice
    key = cfg.rpc_key or _target(cfg).rpc_key
    if not key:
        raise ConfigError(f"target {cfg.target} names no RPC key; pass --rpc-key")
    return RpcDevice.parse(cfg.rpc_tracker, key)


def _layers(ws: Workspace):
    from mpqc.models import layers_from_json
    return layers_from_json(_read_json(ws.layers)["layers"])


def search_bits(cfg) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The search's activation and weight candidates (--a-bits / --w-bits, else --bits)."""
    from mpqc.search.driver import bit_sets
    return bit_sets(cfg.bits, cfg.a_bits, cfg.w_bits)


def candidate_bits(cfg) -> tuple[int, ...]:
    """Every bit-width measured: the search's candidates and the baselines'."""
    from mpqc.latency.space import parse_bits
    bits = set().union(*search_bits(cfg))
    for pair in cfg.baselines or ():
        bits |= set(pair)
    return parse_bits(",".join(map(str, sorted(bits))))


def baseline_pairs(cfg) -> list[tuple[int, int]]:
    if cfg.baselines is not None:
        return [tuple(p) for p in cfg.baselines]
    a_set, w_set = search_bits(cfg)
    return sorted({(min(a_set), min(w_set)), (max(a_set), max(w_set))})


# --- import -------------------------------------------------------------------------
def run_import(cfg, ws):
    from mpqc.importer import import_model
    imported = import_model(cfg.model, weights=cfg.weights, input_shape=cfg.input_shape)
    imported.write(ws.layers)
    layers = imported.layers
    return {"layers": len(layers), "quantizable": sum(l.quantizable for l in layers),
            "input_shape": list(imported.input_shape),
            "kept_8bit": [[l.name, l.reason] for l in layers if not l.quantizable]}


# --- measure ------------------------------------------------------------------------
def run_measure(cfg, ws):
    from tqdm import tqdm

    from mpqc.latency.measure import pending_jobs, run_measurements
    from mpqc.latency.space import model_jobs, random_jobs

    target, bits = _target(cfg), candidate_bits(cfg)
    jobs = model_jobs(_layers(ws), bits, bits)
    if cfg.random_shapes:
        jobs += random_jobs(cfg.random_shapes, cfg.seed, bits, bits)
    _, already = pending_jobs(jobs, ws.latency_db, target, cfg.threads, cfg.passes)
    bar = tqdm(total=len(jobs) * cfg.passes, initial=already, unit="kernel", file=sys.stderr,
               desc=f"measure {target.name}", disable=not cfg.progress)
    try:
        summary = run_measurements(jobs, ws.latency_db, target, threads=cfg.threads,
                                   repeats=cfg.repeats, device=_device(cfg),
                                   tuning_log=cfg.tuning_log, progress=lambda r: bar.update(1),
                                   passes=cfg.passes)
    finally:
        bar.close()
    if summary.failed:
        first = summary.failed[0]
        raise DeviceError(f"{len(summary.failed)} of {len(jobs)} kernels failed on "
                          f"{target.name} (first: {first.shape.key} a{first.a_bits}"
                          f"w{first.w_bits}: {first.error}); the {summary.measured} measured "
                          f"are kept in {ws.latency_db}: rerun the pipeline to retry")
    glue = _measure_glue(cfg, ws, target, bits)
    return {"kernels": len(jobs), "measured": summary.measured, "already": summary.skipped,
            "glue_ms": glue["glue_ms"]}


def _measure_glue(cfg, ws, target, bits) -> dict:
    """glue.json: what the network costs besides its bit-serial layers (timed here, so
    only for a target this machine runs; a board's glue is left at 0 and said so)."""
    from mpqc.latency.glue import measure_glue
    from mpqc.latency.glue_db import glue_pairs
    from mpqc.targets import runs_on_host
    if cfg.rpc_tracker or not runs_on_host(target):
        glue = {"glue_ms": 0.0, "measured": False,
                "reason": f"{target.name} does not run on this machine: the network latency "
                          "the search uses is its bit-serial layers only"}
    else:
        imported = _read_json(ws.layers)
        glue = {**measure_glue(cfg.model, _layers(ws), imported["input_shape"], target,
                               cfg.threads, max(cfg.repeats, 10),
                               pairs=glue_pairs(bits, bits)).to_json(),
                "measured": True}
    _write_json(ws.glue, glue)
    return glue


# --- fit ----------------------------------------------------------------------------
def run_fit(cfg, ws):
    from mpqc.latency.predictor import fit_latency_model
    from mpqc.latency.records import read_db
    model = fit_latency_model(read_db(ws.latency_db), _target(cfg), 0.2, cfg.seed)
    model.save(ws.latency_model)
    keys = ("n_records", "n_heldout", "heldout_within_10pct", "heldout_mape")
    return {k: model.metrics[k] for k in keys}


def _model_files(ws):
    base = ws.latency_model
    return [base, base.with_suffix(".conv.ubj"), base.with_suffix(".pack.ubj")]


# --- search, finetune, baselines ----------------------------------------------------
def _settings(cfg):
    from mpqc.search.loop import SearchSettings
    return SearchSettings(method=cfg.method, epochs=cfg.epochs,
                          finetune_epochs=cfg.finetune_epochs, fp32_epochs=cfg.fp32_epochs,
                          fp32_finetune_epochs=cfg.fp32_finetune_epochs, distill=cfg.distill,
                          finetune_from=cfg.finetune_from,
                          batch_size=cfg.batch_size, gamma_max=cfg.gamma_max,
                          spend_slack=cfg.spend_slack, choice=cfg.choice, margin=cfg.margin,
                          lr=cfg.lr,
                          seed=cfg.seed, progress=cfg.progress)


def _budget(cfg, ws) -> dict:
    """budget_ms / budget_ratio of the search request: an onnxruntime ratio becomes
    milliseconds through the peer timing the search step recorded (peers.json), the
    fastest of its rounds, as the bench step's check takes it."""
    if cfg.budget_ort_ratio is None:
        return {"budget_ms": cfg.budget_ms, "budget_ratio": cfg.budget_ratio}
    peers = _read_json(ws.peers)
    reference = peers.get("ort_int8_fastest_round_ms", peers["ort_int8_ms"])
    return {"budget_ms": cfg.budget_ort_ratio * reference, "budget_ratio": None}


def _peer_network(cfg, weights):
    from mpqc.build.network import NetworkSpec
    from mpqc.build.peers import fp32_network
    return fp32_network(NetworkSpec(model=cfg.model, weights=weights, data=cfg.data,
                                    input_shape=tuple(cfg.input_shape or ())))


def _time_peers(cfg, ws) -> dict:
    """peers.json: the model's fp32 and int8 peers timed on this machine before the
    search, for a budget given relative to onnxruntime int8. Without --weights the
    architecture runs untrained: latency does not depend on the weight values."""
    from dataclasses import asdict

    from mpqc.build.peers import time_peers
    from mpqc.targets import host_cpu
    repeats = max(cfg.bench_repeats, 50)
    network = _peer_network(cfg, cfg.weights)
    timings = time_peers(*network, cfg.threads, repeats)
    peers = {"model": cfg.model, "threads": cfg.threads, "repeats": repeats, "cpu": host_cpu(),
             **{f"{name}_ms": t.median_ms for name, t in timings.items()},
             "timings": {name: asdict(t) for name, t in timings.items()}}
    if cfg.budget_ort_ratio is not None:
        # the budget's reference, timed as the bench step's check times it: onnxruntime
        # int8's run time has two modes here (seen: 0.24 and 0.35 ms for ResNet-20 on
        # one machine within a minute), and a budget set from the median of 50 samples
        # in the slow mode was 0.549x the fastest round at the check
        rounds = _ort_int8_rounds(cfg, network, ROUNDS)
        peers.update(ort_int8_rounds_ms=rounds, ort_int8_fastest_round_ms=min(rounds))
    _write_json(ws.peers, peers)
    return peers


def _request(cfg, ws, out, **extra):
    from mpqc.search.driver import SearchRequest
    glue = _read_json(ws.glue)
    fields = dict(model=cfg.model, data=cfg.data, out=out, weights=cfg.weights,
                  target=cfg.target, cost="latency", latency_model=str(ws.latency_model),
                  **_budget(cfg, ws), bits=cfg.bits, a_bits=cfg.a_bits, w_bits=cfg.w_bits,
                  subset=cfg.subset, threads=cfg.threads, checkpoint=ws.search_checkpoint,
                  glue_ms=float(glue["glue_ms"]),
                  kernel_scale=float(glue.get("kernel_scale", 1.0)))
    fields.update(extra)
    return SearchRequest(**fields)


def run_search(cfg, ws):
    from mpqc.search.driver import search_to_files
    facts = {}
    if cfg.budget_ort_ratio is not None:
        from mpqc.targets import host_cpu
        peers = _read_json(ws.peers) if ws.peers.is_file() else {}
        # a rerun (a killed search, another ratio) keeps the reference it measured,
        # unless the model, the threads or the machine changed
        if ([peers.get(k) for k in ("model", "threads", "cpu")]
                != [cfg.model, cfg.threads, host_cpu()]):
            peers = _time_peers(cfg, ws)
        facts["ort_int8_ms"] = peers["ort_int8_ms"]
    report = search_to_files(_request(cfg, ws, ws.search), _settings(cfg), until="search")
    return {**facts, "predicted_ms": report["predicted_ms"], "budget_ms": report["budget_ms"],
            "fp32_accuracy": report["fp32_accuracy"]}


def _fp32_start(cfg, ws) -> str:
    """The fp32 weights the QAT phases start from: the search step's when it trained or
    fine-tuned them, else the user's."""
    return str(ws.fp32_weights) if _trains_fp32(cfg) else cfg.weights


def _trains_fp32(cfg) -> bool:
    return not cfg.weights or cfg.fp32_finetune_epochs > 0


def run_finetune(cfg, ws):
    from mpqc.search.driver import search_to_files
    report = search_to_files(_request(cfg, ws, ws.finetune), _settings(cfg))
    # the fp32 weights are the search step's artifact; the copy this run wrote is not
    ws.path("finetune.fp32.pt").unlink(missing_ok=True)
    return {"accuracy": report["accuracy"], "predicted_ms": report["predicted_ms"]}


def run_baselines(cfg, ws):
    """Uniform configurations trained with the search's schedule from the same fp32
    start: the other points of the Pareto plot."""
    from mpqc.search.driver import search_to_files
    from dataclasses import replace
    budget = _read_json(ws.search)["budget_ms"]
    # the search's fp32 start, already fine-tuned: the baselines do not fine-tune it again
    settings = replace(_settings(cfg), fp32_finetune_epochs=0)
    points = []
    for a, w in baseline_pairs(cfg):
        out = ws.path(f"baseline-{a}x{w}.json")
        request = _request(cfg, ws, out, uniform=(a, w), weights=_fp32_start(cfg, ws),
                           budget_ms=budget, budget_ratio=None,
                           checkpoint=out.with_name(out.name + ".ckpt"))
        report = search_to_files(request, settings)
        points.append({"label": f"uniform {a}x{w}", "kind": "uniform", "a": a, "w": w,
                       "predicted": report["predicted_ms"], "accuracy": report["accuracy"]})
    _write_json(ws.baselines, {"points": points})
    return {"baselines": [[p["label"], p["accuracy"]] for p in points]}


# --- lower, build, verify, bench --------------------------------------------------------
def _network_spec(cfg, ws):
    from mpqc.build.network import NetworkSpec
    return NetworkSpec(model=cfg.model, weights=cfg.weights, checkpoint=str(ws.quantized),
                       data=cfg.data, input_shape=tuple(cfg.input_shape or ()))


def run_lower(cfg, ws):
    from mpqc.build.network import build_quantized_model
    from mpqc.lower import lower
    model, shape = build_quantized_model(_network_spec(cfg, ws))
    lowered = lower(model, shape, _target(cfg), tuning_log=cfg.tuning_log)
    ws.relax.write_text(lowered.module.script(show_meta=False))
    layers = [{"name": l.name, "kind": l.kind, "a": l.a_bits, "w": l.w_bits, "impl": l.impl}
              for l in lowered.program.layers]
    _write_json(ws.lowering, {"input_shape": list(lowered.program.input_shape),
                              "output_shape": list(lowered.program.output_shape),
                              "layers": layers})
    return {"ops": len(layers), "bit_serial": sum("bitserial" in l["impl"] for l in layers)}


def run_build(cfg, ws):
    from mpqc.build.compile import compile_library
    search = _read_json(ws.finetune)
    result = compile_library(_network_spec(cfg, ws), _target(cfg), ws.library(cfg.model),
                             tuning_log=cfg.tuning_log, predicted_ms=search["predicted_ms"],
                             budget_ms=search["budget_ms"])
    return {"library": str(result.library), "sha256": result.manifest["sha256"],
            "compile_seconds": round(result.seconds, 1)}


# a board over RPC scores this many test images unless --accuracy-images says otherwise:
# one round trip per image, and an emulated board runs ResNet-20 at tens of ms an image
RPC_ACCURACY_IMAGES = 1000


def run_verify(cfg, ws):
    from mpqc.build.accuracy import library_accuracy
    from mpqc.build.verify import verify_library
    device = _device(cfg)
    result = verify_library(ws.library(cfg.model), count=cfg.verify_images, device=device)
    out = result.to_json()
    limit = cfg.accuracy_images
    if limit is None:   # the images the fine-tune's accuracy was taken on
        from mpqc.search.driver import test_subset_size
        limit = test_subset_size(cfg.subset) if cfg.subset else None
        if device is not None:
            limit = min(limit or RPC_ACCURACY_IMAGES, RPC_ACCURACY_IMAGES)
    if limit != 0:
        out["library_accuracy"] = library_accuracy(ws.library(cfg.model), limit, device,
                                                   cfg.progress, seed=cfg.seed).to_json()
    _write_json(ws.verify, out)
    facts = {"exact": result.exact, "max_abs_diff": result.max_abs_diff,
             "first_mismatch": result.first_mismatch}
    if "library_accuracy" in out:
        facts["library_accuracy"] = out["library_accuracy"]["accuracy"]
    return facts


def run_bench(cfg, ws):
    from mpqc.build.bench import bench_library
    from mpqc.targets import runs_on_host
    if cfg.rpc_tracker or not runs_on_host(_target(cfg)):
        result = {"measured": False, "reason": f"the library is for {cfg.target}, not this "
                  "machine; time it on the board (boards behind RPC may be emulated)"}
    else:
        from mpqc import runtime
        result = {"measured": True, **bench_library(ws.library(cfg.model), peers=True,
                                                    threads=cfg.threads,
                                                    repeats=cfg.bench_repeats)}
        result["profile"] = runtime.load(ws.library(cfg.model)).profile(cfg.bench_repeats,
                                                                        cfg.threads)
        if cfg.budget_ratio is not None:
            result["same_run"] = _same_run_ratio(cfg, ws)
        elif cfg.budget_ort_ratio is not None:
            result["same_run"] = _same_run_ort_ratio(cfg, ws)
    _write_json(ws.bench, result)
    return {k: result.get(k) for k in ("measured", "mpqc_ms", "ort_int8_ms", "torch_fp32_ms")}


def _same_run_ratio(cfg, ws, rounds: int = ROUNDS) -> dict:
    """A budget given as a ratio of the uniform configuration at the largest bits, checked
    as a ratio: that uniform library is built too and both are timed in alternating
    rounds. A shared machine's speed drifts between the measure step and this one (seen:
    1.3-1.5x within seconds); a ratio timed in one run does not."""
    from mpqc import runtime
    from mpqc.build.compile import compile_library
    from mpqc.build.network import NetworkSpec
    a_top, w_top = (max(s) for s in search_bits(cfg))  # searched bits, not the baselines'
    search = _read_json(ws.search)
    spec = NetworkSpec(model=cfg.model, weights=search["fp32_weights"], data=cfg.data,
                       config=f"uniform:{a_top},{w_top}",
                       input_shape=tuple(cfg.input_shape or ()))
    path = ws.path(f"reference_uniform{a_top}x{w_top}.so")
    compile_library(spec, _target(cfg), path, tuning_log=cfg.tuning_log)
    libs = [runtime.load(ws.library(cfg.model)), runtime.load(path)]
    timed = alternating_ratio(
        *[lambda lib=lib: lib.time(repeats=_round_repeats(cfg, rounds),
                                   threads=cfg.threads).median_ms for lib in libs],
        rounds=rounds)
    return {"reference": f"uniform {a_top}x{w_top}", "reference_library": path.name,
            "rounds": rounds, **timed, "budget_ratio": cfg.budget_ratio,
            "within_budget": timed["ratio"] <= cfg.budget_ratio}


def _ort_int8_round(cfg, run_int8, repeats: int) -> float:
    """One round: the median of `repeats` samples of onnxruntime int8."""
    from mpqc.bench.timing import pinned_threads, time_callable
    with pinned_threads(cfg.threads):
        return time_callable(run_int8, repeats=repeats).median_ms


def _round_repeats(cfg, rounds: int) -> int:
    return max(cfg.bench_repeats // rounds, 3)


def _ort_int8_rounds(cfg, network, rounds: int) -> list[float]:
    """onnxruntime int8 timed in `rounds` rounds of the bench step's size, alone."""
    from mpqc.build.peers import ort_int8_runner
    with ort_int8_runner(*network, cfg.threads) as run_int8:
        return [_ort_int8_round(cfg, run_int8, _round_repeats(cfg, rounds))
                for _ in range(rounds)]


def _same_run_ort_ratio(cfg, ws, rounds: int = ROUNDS) -> dict:
    """A budget given as a ratio of onnxruntime int8, checked as that ratio: the library
    and the int8 model timed in alternating rounds of one run."""
    from mpqc import runtime
    from mpqc.build.peers import ort_int8_runner
    lib = runtime.load(ws.library(cfg.model))
    repeats = _round_repeats(cfg, rounds)
    with ort_int8_runner(*_peer_network(cfg, cfg.weights), cfg.threads) as run_int8:
        timed = alternating_ratio(
            lambda: lib.time(repeats=repeats, threads=cfg.threads).median_ms,
            lambda: _ort_int8_round(cfg, run_int8, repeats), rounds=rounds)
    return {"reference": "onnxruntime int8", "rounds": rounds, **timed,
            "budget_ratio": cfg.budget_ort_ratio,
            "within_budget": timed["ratio"] <= cfg.budget_ort_ratio}


def alternating_ratio(time_library, time_reference, rounds: int) -> dict:
    """Time two libraries in alternating rounds; the ratio of the fastest round of each,
    as the measure step keeps each kernel's fastest pass: this machine's slow spells add
    about the same time to both libraries (seen: +0.014 ms to democnn's 0.031 and
    0.045 ms), which pulls a per-round ratio towards 1."""
    from statistics import median
    ratios, times = [], ([], [])
    for _ in range(rounds):
        pair = (time_library(), time_reference())
        for kept, t in zip(times, pair):
            kept.append(t)
        ratios.append(pair[0] / pair[1])
    return {"library_ms": min(times[0]), "reference_ms": min(times[1]),
            "ratio": min(times[0]) / min(times[1]), "median_round_ratio": median(ratios)}


def run_report(cfg, ws):
    from mpqc.pipeline.report import write_report
    summary = write_report(cfg, ws)
    return {"ok": summary["ok"], "failures": summary["failures"]}


# --- the list ---------------------------------------------------------------------------
_SEARCH_OPTIONS = ("model", "weights", "data", "target", "budget_ms", "budget_ratio",
                   "budget_ort_ratio",
                   "method", "gamma_max", "spend_slack", "choice", "margin", "lr", "bits",
                   "a_bits", "w_bits",
                   "baselines", "epochs", "finetune_epochs", "fp32_epochs",
                   "fp32_finetune_epochs", "distill", "finetune_from", "subset", "batch_size",
                   "seed", "threads")


def _user_files(cfg):
    return [cfg.weights] if cfg.weights else []


def _lib(cfg, ws):
    return [ws.library(cfg.model), ws.manifest(cfg.model)]


STEPS: list[Step] = [
    Step("import", "read the model, list its layers (layers.json)", run_import,
         lambda c, w: [w.layers], lambda c, w: [], ("model", "weights", "input_shape"),
         files=_user_files),
    Step("measure", "time every layer at every bit pair on the target (latency.jsonl)",
         run_measure, lambda c, w: [w.latency_db, w.glue], lambda c, w: [w.layers],
         ("target", "bits", "a_bits", "w_bits", "baselines", "threads", "repeats", "passes",
          "random_shapes", "seed", "tuning_log", "rpc_tracker", "rpc_key")),
    Step("fit", "fit the latency model (latency_model.json)", run_fit,
         lambda c, w: _model_files(w), lambda c, w: [w.latency_db], ("target", "seed")),
    Step("search", "train the supernet and choose the bits (search.json)", run_search,
         lambda c, w: [w.search] + ([w.fp32_weights] if _trains_fp32(c) else [])
         + ([] if c.budget_ort_ratio is None else [w.peers]),
         lambda c, w: [w.layers, w.glue, *_model_files(w)], _SEARCH_OPTIONS,
         scratch=lambda c, w: [w.search_checkpoint], files=_user_files),
    Step("finetune", "fine-tune the chosen configuration (finetune.pt, finetune.json)",
         run_finetune, lambda c, w: [w.finetune, w.quantized],
         lambda c, w: [w.search] + ([] if c.budget_ort_ratio is None else [w.peers]),
         _SEARCH_OPTIONS),
    Step("baselines", "train uniform baselines for the Pareto plot (baselines.json)",
         run_baselines, lambda c, w: [w.baselines],
         lambda c, w: [w.search] + ([w.fp32_weights] if _trains_fp32(c) else []),
         _SEARCH_OPTIONS,
         scratch=lambda c, w: [w.path(f"baseline-{a}x{b}.json.ckpt")
                               for a, b in baseline_pairs(c)]),
    Step("lower", "lower to Relax (network.relax.py, lowering.json)", run_lower,
         lambda c, w: [w.relax, w.lowering], lambda c, w: [w.quantized],
         ("model", "weights", "data", "input_shape", "target", "tuning_log")),
    Step("build", "compile the library (.so and its manifest)", run_build, _lib,
         lambda c, w: [w.quantized, w.finetune, w.lowering],
         ("model", "weights", "data", "input_shape", "target", "tuning_log")),
    Step("verify", "check the library against the integer PyTorch model (verify.json)",
         run_verify, lambda c, w: [w.verify], lambda c, w: _lib(c, w),
         ("verify_images", "accuracy_images", "subset", "seed", "rpc_tracker", "rpc_key")),
    Step("bench", "time the library and torch / onnxruntime peers (bench.json)", run_bench,
         lambda c, w: [w.bench], lambda c, w: _lib(c, w),
         ("threads", "bench_repeats", "rpc_tracker", "target", "budget_ratio",
          "budget_ort_ratio")),
    Step("report", "summary.json, report.md and plots", run_report,
         lambda c, w: [w.summary, w.report],
         lambda c, w: [w.layers, w.latency_db, w.glue, *_model_files(w), w.search, w.finetune,
                       w.baselines, w.verify, w.bench, *_lib(c, w)], ()),
]

STEP_NAMES = tuple(s.name for s in STEPS)
