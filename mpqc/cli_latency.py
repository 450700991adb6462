"""`mpqc measure`, `mpqc fit`, `mpqc predict`: the latency model's command line."""
from __future__ import annotations

import json
import sys

import click



def _imported(model_spec: str, input_shape: str | None):
    from mpqc.cli import _parse_shape
    from mpqc.importer import import_model
    return import_model(model_spec, input_shape=_parse_shape(input_shape))


def _layers(model_spec: str, input_shape: str | None):
    return _imported(model_spec, input_shape).layers


@click.command("measure")
@click.option("--target", "target_name", default="host", show_default=True,
              help="Target name or .json path.")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
              help="Latency database (JSON lines); appended to, never rewritten.")
@click.option("--model", "model_spec", default=None,
              help="Measure this model's quantizable layers (resnet20, democnn, pkg.mod:fn).")
@click.option("--input-shape", default=None, help="C,H,W of one input for a user model.")
@click.option("--space", type=click.Choice(["model", "random"]), default=None,
              help="model: the layers of --model (default when --model is given); "
                   "random: --count random layer shapes for training the predictor.")
@click.option("--count", default=200, show_default=True, help="Random shapes to measure.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random space.")
@click.option("--bits", default="1,2,3,4", show_default=True,
              help="Bit-widths for both a and w (list 1,2,4 or range 1-4).")
@click.option("--a-bits", default=None, help="Activation bit-widths (default: --bits).")
@click.option("--w-bits", default=None, help="Weight bit-widths (default: --bits).")
@click.option("--threads", default=1, show_default=True, help="Threads the kernels run on.")
@click.option("--repeats", default=20, show_default=True, help="Timed samples per kernel.")
@click.option("--passes", default=1, show_default=True, type=click.IntRange(min=1),
              help="Measure every kernel this many times, one whole pass after another; "
                   "`mpqc fit` keeps each kernel's fastest pass. On a shared machine, whose "
                   "slow spells last minutes, 2 passes make the database reproducible. "
                   "Rerunning with a larger --passes adds the missing passes.")
@click.option("--tuning-log", type=click.Path(dir_okay=False), default=None,
              help="Use the tuned schedules of this log (as the build does).")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure on devices registered at this TVM RPC tracker.")
@click.option("--rpc-key", default=None, help="Device key (default: the target's).")
@click.option("--workers", type=int, default=None,
              help="Devices to use at once (default: every idle one under the key).")
@click.option("--emulated", is_flag=True,
              help="Flag the records as emulated (automatic for a loopback board of "
                   "another architecture).")
@click.option("--glue/--no-glue", default=None,
              help="Also time the network's glue (8-bit first/last layers, pooling, adds, "
                   "VM), and how much slower the kernels run inside the network: compile "
                   "--model at the two smallest and the largest uniform pair, time "
                   "each library and its kernels; costs three network compiles. Default: on "
                   "for --model on this machine, off over RPC (not supported there).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def measure_cmd(target_name, db_path, model_spec, input_shape, space, count, seed, bits,
                a_bits, w_bits, threads, repeats, passes, tuning_log, rpc_tracker, rpc_key,
                workers, emulated, glue, quiet):
    """Measure bit-serial layers on a target into a latency database.

    Each (layer shape, a, w) is built with the schedules the library uses, then timed
    (bit-packing + convolution with its epilogue; median of --repeats samples after
    warm-up). Records already in --db are skipped, so a killed run resumes where it
    stopped; failures are recorded, summarised at the end and retried by a rerun.

    \b
      mpqc measure --model resnet20 --db latency.jsonl          (kernels and glue)
      mpqc measure --space random --count 300 --db latency.jsonl
      mpqc measure --target arm64-cortex-a72 --rpc-tracker 127.0.0.1:9190 --model resnet20 --db arm.jsonl
    """
    from tqdm import tqdm

    from mpqc.cli import _rpc_device
    from mpqc.latency.measure import run_measurements
    from mpqc.latency.space import model_jobs, parse_bits, random_jobs
    from mpqc.targets import load_target

    target = load_target(target_name)
    a_set, w_set = parse_bits(a_bits or bits), parse_bits(w_bits or bits)
    space = space or ("model" if model_spec else None)
    if space is None:
        raise click.UsageError("say what to measure: --model M, or --space random --count N")
    if glue and space != "model":
        raise click.UsageError("--glue times a network: give --model")
    imported = None
    if space == "model":
        if not model_spec:
            raise click.UsageError("--space model needs --model")
        imported = _imported(model_spec, input_shape)
        jobs = model_jobs(imported.layers, a_set, w_set)
    else:
        jobs = random_jobs(count, seed, a_set, w_set)
    device = _rpc_device(target, rpc_tracker, rpc_key)
    if glue is None:
        glue = space == "model" and device is None
    if glue and device is not None:
        raise click.UsageError("--glue is timed on this machine only; over RPC pass --no-glue")
    bar = tqdm(total=len(jobs) * passes, unit="kernel", desc=f"measure {target.name}",
               file=sys.stderr, disable=quiet)

    def progress(record):
        bar.update(1)
        bar.set_postfix_str(f"{record.shape.key} a{record.a_bits}w{record.w_bits} "
                            + (f"{record.median_ms:.3f} ms" if record.ok else "FAILED"))

    from mpqc.latency.measure import pending_jobs
    _, already = pending_jobs(jobs, db_path, target, threads, passes)
    bar.update(already)
    try:
        summary = run_measurements(jobs, db_path, target, threads=threads, repeats=repeats,
                                   device=device, workers=workers, tuning_log=tuning_log,
                                   emulated=emulated, progress=progress, passes=passes)
    finally:
        bar.close()
    click.echo(f"{summary.measured} measured, {summary.skipped} already in {db_path}, "
               f"{len(summary.failed)} failed")
    for record in summary.failed[:10]:
        click.echo(f"  FAILED {record.shape.key} a{record.a_bits}w{record.w_bits}: "
                   f"{record.error}", err=True)
    if summary.failed:
        click.echo("failed kernels are kept as error records; rerun the same command to "
                   "retry them", err=True)
        sys.exit(1)
    if glue:
        _measure_glue(imported, target, threads, repeats, db_path, a_set, w_set)


def _measure_glue(imported, target, threads, repeats, db_path, a_set, w_set) -> None:
    from mpqc.latency.glue_db import glue_pairs, measure_glue_record
    click.echo(f"glue of {imported.model_spec}: compiling and timing the network at its "
               "two smallest and its largest uniform pair ...", err=True)
    record, fresh = measure_glue_record(
        imported.model_spec, imported.input_shape, target, threads, repeats, db_path,
        glue_pairs(a_set, w_set), weights=imported.weights, layers=imported.layers)
    points = "; ".join(f"a{a}w{w}: library {lib:.4f} - kernels {k:.4f} ms"
                       for (a, w), lib, k in zip(record.pairs, record.library_ms,
                                                 record.kernels_ms))
    click.echo(f"network = {record.kernel_scale:.3f} x kernels + glue {record.glue_ms:.4f} ms "
               f"({points})"
               + ("" if fresh else f", already in {db_path}"))


@click.command("fit")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
              help="Latency database written by `mpqc measure`.")
@click.option("--target", "target_name", default="host", show_default=True,
              help="Fit the records of this target.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Model file (.json; the trees go beside it as .ubj).")
@click.option("--heldout", default=0.2, show_default=True,
              help="Fraction of layer shapes held out for the reported error.")
@click.option("--seed", default=0, show_default=True)
@click.option("--allow-emulated", is_flag=True,
              help="Also fit timings from emulated devices (meaningless as speed).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def fit_cmd(db_path, target_name, out_path, heldout, seed, allow_emulated, as_json):
    """Fit the latency predictor (XGBoost + exact table) of one target.

    A kernel measured in several passes (`mpqc measure --passes N`) counts once, at its
    fastest pass. The glue measured for networks (`mpqc measure --model M`: kernel scale
    and glue) is copied into the model, so that `mpqc predict`, the search and `mpqc
    compile` price a network as it runs.

    The reported error is held out by layer shape: the records of a random 20% of the
    shapes are predicted by a model fitted on the others. The saved model is then
    fitted on every record.
    """
    from mpqc.latency.glue_db import read_glue
    from mpqc.latency.predictor import fit_latency_model
    from mpqc.latency.records import read_db
    from mpqc.targets import load_target

    if not 0 < heldout < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--heldout")
    target = load_target(target_name)
    model = fit_latency_model(read_db(db_path), target, heldout, seed, allow_emulated,
                              glue=read_glue(db_path))
    model.save(out_path)
    m = model.metrics
    if as_json:
        from mpqc.cli import _echo_json
        _echo_json(m)
        return
    click.echo(f"{target.name}: {m['n_records']} records, {m['n_kernels']} kernels of "
               f"{m['n_shapes']} shapes; held out {m['heldout_shapes']} shapes "
               f"({m['n_heldout']} kernels): "
               f"{m['heldout_within_10pct']:.1%} within 10%, {m['heldout_within_5pct']:.1%} "
               f"within 5%, MAPE {m['heldout_mape']:.1%}")
    for key, ms in model.glue.items():
        click.echo(f"glue {key}: {model.kernel_scales.get(key, 1.0):.3f} x kernels + "
                   f"{ms:.4f} ms")
    click.echo(f"wrote {out_path}")


@click.command("predict")
@click.option("--model-file", required=True, type=click.Path(dir_okay=False),
              help="Latency model from `mpqc fit`.")
@click.option("--model", "model_spec", required=True, help="resnet20, democnn or pkg.mod:fn.")
@click.option("--input-shape", default=None, help="C,H,W of one input for a user model.")
@click.option("--config", "config_text", required=True,
              help="uniform:A,W, a search.json, or a JSON {layer: [a, w]}.")
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict_cmd(model_file, model_spec, input_shape, config_text, threads, as_json):
    """Predict the latency of every quantized layer and of the network (plus its glue
    when the model holds a measurement of it)."""
    from mpqc.latency.network import parse_config, predict_network
    from mpqc.latency.predictor import LatencyModel

    imported = _imported(model_spec, input_shape)
    layers = imported.layers
    model = LatencyModel.load(model_file)
    glue = model.glue_ms(model_spec, imported.input_shape, threads)
    result = predict_network(model, layers, parse_config(config_text, layers), threads,
                             glue or 0.0,
                             model.kernel_scale(model_spec, imported.input_shape, threads))
    if as_json:
        from mpqc.cli import _echo_json
        _echo_json({"target": model.target, "glue_measured": glue is not None,
                    **result.to_json()})
        return
    from mpqc.cli import _table
    rows = [[l.name, f"{l.a_bits}", f"{l.w_bits}", f"{l.ms:.4f}",
             "measured" if l.measured else "predicted"] for l in result.layers]
    click.echo(_table(rows, ["layer", "a", "w", "ms", "source"]))
    click.echo(f"total {result.total_ms:.4f} ms on {model.target}, {threads} thread(s)"
               + (f" ({result.kernel_scale:.3f} x kernels + glue {result.glue_ms:.4f} ms)"
                  if glue is not None else
                  " (bit-serial layers only: no glue measured for this network; "
                  "`mpqc measure --model` then `mpqc fit`)"))


@click.command("latency")
@click.option("--model-file", required=True, type=click.Path(dir_okay=False),
              help="Latency model from `mpqc fit`.")
@click.option("--model", "model_spec", default="resnet20", show_default=True)
@click.option("--input-shape", default=None, help="C,H,W of one input for a user model.")
@click.option("--target", "target_name", default="host", show_default=True)
@click.option("--configs", default=20, show_default=True, help="Random mixed configurations.")
@click.option("--bits", default="1,2,3,4", show_default=True, help="Candidate bit-widths.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--repeats", default=20, show_default=True)
@click.option("--db", "db_path", default=None, type=click.Path(dir_okay=False),
              help="Where this run's kernel measurements go (default: a temporary file, "
                   "so they are fresh).")
@click.option("--use-exact", is_flag=True,
              help="Let measurements in the model's exact table replace predictions.")
@click.option("--compiled", is_flag=True,
              help="Compare with the compiled library instead: build and time the whole "
                   "network per configuration (one network compile each) against "
                   "kernels + glue predicted.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the result here.")
def bench_latency_cmd(model_file, model_spec, input_shape, target_name, configs, bits, seed,
                      threads, repeats, db_path, use_exact, compiled, json_path):
    """Network-level check of the latency model on random mixed configurations.

    For each configuration the predicted network latency (sum of the layer predictions)
    is compared with the sum of the same kernels measured in this run; with --compiled,
    the prediction plus the network's glue is compared with the library built for the
    configuration and timed here (batch 1, median after warm-up).
    """
    import tempfile
    from pathlib import Path

    from tqdm import tqdm

    from mpqc.latency.network import check_network, random_configs
    from mpqc.latency.predictor import LatencyModel
    from mpqc.latency.space import parse_bits
    from mpqc.targets import load_target

    target = load_target(target_name)
    model = LatencyModel.load(model_file)
    if model.target != target.name:
        raise click.BadParameter(f"the model is of target {model.target}, not {target.name}",
                                 param_hint="--target")
    if configs < 1:
        raise click.BadParameter("must be at least 1", param_hint="--configs")
    imported = _imported(model_spec, input_shape)
    layers = imported.layers
    bit_set = parse_bits(bits)
    chosen = random_configs(layers, bit_set, bit_set, configs, seed)
    if compiled:
        if db_path:
            raise click.UsageError("--db holds kernel timings; --compiled times libraries")
        _bench_compiled(model, imported, chosen, target, threads, repeats, use_exact,
                        json_path)
        return
    with tempfile.TemporaryDirectory(prefix="mpqc-bench-latency-") as tmp:
        bar = tqdm(unit="kernel", desc="measure kernels", file=sys.stderr)
        result = check_network(model, layers, chosen, target,
                               db_path or Path(tmp) / "kernels.jsonl", threads, repeats,
                               use_exact, progress=lambda r: bar.update(1))
        bar.close()
    out = {"model": model_spec, "target": target.name, "threads": threads,
           "use_exact": use_exact, **result.to_json()}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    rows = [[str(i), f"{p:.4f}", f"{m:.4f}", f"{e:+.1%}"] for i, (p, m, e) in enumerate(
        zip(result.predicted_ms, result.measured_ms,
            [(p - m) / m for p, m in zip(result.predicted_ms, result.measured_ms)]))]
    from mpqc.cli import _table
    click.echo(_table(rows, ["config", "predicted ms", "measured ms", "error"]))
    click.echo(f"mean absolute error {out['mean_abs_error']:.1%} over {out['configs']} "
               f"configurations (max {out['max_abs_error']:.1%})")


def _bench_compiled(model, imported, chosen, target, threads, repeats, use_exact,
                    json_path) -> None:
    from pathlib import Path

    from mpqc.cli import _table
    from mpqc.latency.library_check import check_compiled

    if model.glue_ms(imported.model_spec, imported.input_shape, threads) is None:
        click.echo(f"warning: the latency model holds no glue for {imported.model_spec} "
                   f"({'x'.join(map(str, imported.input_shape))}, {threads} thread(s)); "
                   "predictions are its kernels only (`mpqc measure --model` then `mpqc fit`)",
                   err=True)

    def progress(i, measured, predicted):
        click.echo(f"config {i + 1}/{len(chosen)}: library {measured:.4f} ms, predicted "
                   f"{predicted:.4f} ms", err=True)

    result = check_compiled(model, imported.model_spec, layers=imported.layers,
                            input_shape=imported.input_shape, configs=chosen, target=target,
                            threads=threads, repeats=repeats, use_exact=use_exact,
                            weights=imported.weights, progress=progress)
    out = {"model": imported.model_spec, "target": target.name, "threads": threads,
           **result.to_json()}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    rows = [[str(i), f"{p:.4f}", f"{m:.4f}", f"{e:+.1%}"] for i, (p, m, e) in enumerate(
        zip(result.predicted_ms, result.measured_ms, result.errors))]
    click.echo(_table(rows, ["config", "predicted ms", "library ms", "error"]))
    click.echo(f"mean absolute error {out['mean_abs_error']:.1%} over {out['configs']} "
               f"compiled configurations (max {out['max_abs_error']:.1%}); glue "
               + (f"{result.glue_ms:.4f} ms, kernels x {result.kernel_scale:.3f}"
                  if result.glue_ms is not None else "not measured"))


def register(group: click.Group) -> None:
    for command in (measure_cmd, fit_cmd, predict_cmd):
        group.add_command(command)
    group.commands["bench"].add_command(bench_latency_cmd, "latency")
