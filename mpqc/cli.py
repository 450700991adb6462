"""The `mpqc` command line: a thin click layer over the library.

Each command parses its options, calls one library function and prints the result.
Errors the library raises on purpose (MpqcError) become one line on stderr and exit
code 2; `mpqc --debug ...` shows the traceback instead.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mpqc.errors import BuildError, MpqcError


class _Group(click.Group):
    """Turns MpqcError into a one-line message and exit code 2 (unless --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MpqcError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"mpqc: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("mpqc: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="mpqc")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """mpqc: mixed-precision quantization compiler.

    Turns a PyTorch network into a mixed-precision one (a bit-width per layer, found by
    a latency-constrained search) and compiles it into a shared library of TVM
    bit-serial kernels for an x86 or ARM64 CPU.

    Targets are named (`mpqc targets`) or given as a path to a target .json file;
    models as `resnet20`, `democnn` or `package.module:function`; data as `mnist`,
    `cifar10:DIR` or `imagefolder:PATH` (a directory or .zip).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _model_options(command):
    """--model and --weights, as every command that takes a network spells them."""
    command = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                           help="State dict to load (torch.load with weights_only=True).")(command)
    return click.option("--model", "model_spec", required=True,
                        help="resnet20, democnn or package.module:function.")(command)


def _conv_options(command):
    """--target and --shape of the single-kernel commands."""
    command = click.option("--shape", required=True, metavar="H,W,CIN,COUT,K,S,P",
                           help="Input height, width, channels in/out, kernel, stride, "
                                "padding.")(command)
    return click.option("--target", "target_name", default="host", show_default=True,
                        help="Target name or target .json path (must run on this machine, "
                             "or on --rpc-tracker where offered).")(command)


@main.command("targets")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of target objects.")
@click.option("--detect", is_flag=True,
              help="Print the built-in target that matches this machine's CPU.")
def targets_cmd(names: tuple[str, ...], as_json: bool, detect: bool) -> None:
    """List the compilation targets (built-in files and `host`).

    `host` is this machine's CPU as LLVM detects it (exact -mcpu); the built-in
    targets are portable families and boards. Pass a target by name or by the path of
    your own target .json file (same keys as the files in targets/); `mpqc targets
    FILE.json` checks such a file and shows it.
    """
    from mpqc import targets as tg

    if detect:
        found = tg.detect_target()
        if as_json:
            _echo_json({**found.to_json(), "host_cpu": tg.host_cpu()})
        else:
            click.echo(f"{found.name}  (host CPU: {tg.host_cpu()})")
        return
    listed = [tg.load_target(n) for n in names] if names else tg.all_targets()
    if as_json:
        _echo_json([t.to_json() for t in listed])
        return
    rows = [[t.name, t.arch, t.mcpu or "-", t.popcount, t.cross_compiler or "-",
             t.rpc_key or "-", t.description] for t in listed]
    click.echo(_table(rows, ["name", "arch", "mcpu", "popcount", "cross compiler",
                             "rpc key", "description"]))


@main.command("data")
@click.argument("spec")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Cache directory for decoded images (default: $MPQC_CACHE or ~/.cache/mpqc).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def data_cmd(spec: str, cache: str | None, as_json: bool) -> None:
    """Load a dataset and describe its train/val/test splits.

    SPEC is `mnist` (the embedded default), `cifar10:DIR` (the CIFAR-10 python
    release) or `imagefolder:PATH` (train/<class>/ and test/<class>/ images, a
    directory or a .zip; decoded once and cached).
    """
    from mpqc.data import load_dataset

    splits = load_dataset(spec, cache_dir=cache)
    info = {"name": splits.name, "train": len(splits.train), "val": len(splits.val),
            "test": len(splits.test), "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "mean": list(splits.mean),
            "std": list(splits.std), "class_names": list(splits.class_names)}
    if as_json:
        _echo_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key:12s} {value}")


@main.command("import")
@_model_options
@click.option("--input-shape", default=None,
              help="C,H,W of one input (default: the built-in model's own).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the layer list as JSON here (layers.json).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def import_cmd(model_spec: str, weights: str | None, input_shape: str | None,
               out: str | None, as_json: bool) -> None:
    """Import a PyTorch model and list its quantizable layers.

    Every Conv2d and Linear is listed with its shape and MACs; layers the bit-serial
    kernels cannot run (and the 8-bit first and last layers) are marked with the
    reason. This is the `import` step of the pipeline (layers.json).
    """
    from mpqc.importer import import_model

    result = import_model(model_spec, weights=weights, input_shape=_parse_shape(input_shape))
    if out:
        result.write(out)
    if as_json:
        _echo_json(result.to_json())
        return
    rows = [[l.name, l.kind, f"{l.in_channels}->{l.out_channels}", "x".join(map(str, l.kernel)),
             str(l.stride[0]), "x".join(map(str, l.in_hw)), f"{l.macs / 1e6:.2f}",
             "yes" if l.quantizable else f"no: {l.reason}"] for l in result.layers]
    click.echo(_table(rows, ["layer", "kind", "channels", "kernel", "stride", "input",
                             "MMACs", "quantizable"]))
    if out:
        click.echo(f"wrote {out}")


@main.command("eval")
@_model_options
@click.option("--data", "data_spec", required=True,
              help="mnist, cifar10:DIR or imagefolder:PATH.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Cache directory for decoded images.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def eval_cmd(model_spec, weights, data_spec, split, limit, cache, as_json):
    """Top-1 accuracy of a float (fp32) model on a dataset split."""
    from torch.utils.data import Subset

    from mpqc.data import load_dataset
    from mpqc.evaluation import evaluate_accuracy
    from mpqc.models import build_model, load_weights

    splits = load_dataset(data_spec, cache_dir=cache, augment=False)
    dataset = getattr(splits, split)
    if limit:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    model = build_model(model_spec, num_classes=splits.num_classes)
    if weights:
        load_weights(model, weights)
    result = evaluate_accuracy(model, dataset)
    info = {"model": model_spec, "weights": weights, "data": data_spec, "split": split,
            "images": result.total, "correct": result.correct, "accuracy": result.accuracy}
    if as_json:
        _echo_json(info)
    else:
        click.echo(f"{model_spec} on {data_spec} ({split}, {result.total} images): "
                   f"{result.accuracy:.2%} top-1")


@main.command("kernel")
@_conv_options
@click.option("--bits", "bit_pairs", multiple=True, default=["1x1", "2x2"], show_default=True,
              metavar="AxW", help="Activation x weight bits; repeat for several pairs.")
@click.option("--repeats", default=10, show_default=True, help="Timed repeats (median reported).")
@click.option("--tuning-log", type=click.Path(dir_okay=False), default=None,
              help="Use the best knobs recorded by `mpqc tune` in this log.")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Run on a remote device registered at this TVM RPC tracker (no timing).")
@click.option("--rpc-key", default=None, help="Device key at the tracker (default: the target's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def kernel_cmd(target_name, shape, bit_pairs, repeats, tuning_log, rpc_tracker, rpc_key,
               as_json):
    """Build a bit-serial convolution, check it against numpy and time it.

    Each (a, w) pair is compiled with the target's schedule (fused integer
    requantization epilogue), run on random codes, compared integer for integer with
    the numpy reference, and timed (median of repeats, TVM_NUM_THREADS threads).
    Exits 1 if any pair is not exact.
    """
    from mpqc.kernel_check import check_conv, conv_spec_for
    from mpqc.targets import load_target
    from mpqc.tuning import best_variant

    target = load_target(target_name)
    device = _rpc_device(target, rpc_tracker, rpc_key)
    dims = _parse_ints(shape, 7, "--shape")
    results = []
    for pair in bit_pairs:
        a_bits, w_bits = _parse_ints(pair.replace("x", ","), 2, "--bits")
        spec = conv_spec_for(*dims, a_bits, w_bits, target)
        spec, knobs = (best_variant(tuning_log, spec, target) or (spec, None))[:2]
        results.append(check_conv(spec, target, knobs, repeats=repeats, device=device))
    if as_json:
        _echo_json([r.to_json() for r in results])
    else:
        num = lambda v, fmt: "-" if v is None else format(v, fmt)
        rows = [[r.spec, f"{r.a_bits}x{r.w_bits}", "yes" if r.exact else f"NO ({r.mismatches})",
                 num(r.median_ms, ".4f"), num(r.min_ms, ".4f"), num(r.gbmacs, ".1f")]
                for r in results]
        click.echo(_table(rows, ["kernel", "bits", "exact", "median ms", "min ms",
                                 "G binary MAC/s"]))
    if not all(r.exact for r in results):
        sys.exit(1)


@main.command("tune")
@_conv_options
@click.option("--bits", "bit_pairs", multiple=True, default=["1x1"], show_default=True,
              metavar="AxW", help="Activation x weight bits; repeat for several pairs.")
@click.option("--log", "log_path", default="tuning.jsonl", show_default=True,
              type=click.Path(dir_okay=False), help="Tuning log (JSON lines), appended.")
@click.option("--trials", default=None, type=int,
              help="Measure at most this many knob choices per kernel (default: all 60).")
@click.option("--repeats", default=10, show_default=True, help="Timed repeats per choice.")
def tune_cmd(target_name, shape, bit_pairs, log_path, trials, repeats):
    """Search the schedule knobs of a bit-serial conv by measuring them.

    Every choice (output tile width, channel tile, reduction order, bit-loop
    unrolling) is built, checked integer-exact against numpy and timed; each result
    is appended to the log at once, for every pack word the target supports (the
    word is compared with its bit-packing time included). Rerunning skips what the
    log already holds, so an interrupted tuning resumes. `mpqc kernel --tuning-log`
    and `mpqc bench kernels --tuning-log` use the best entry.
    """
    from tqdm import tqdm

    from mpqc.kernel_check import conv_spec_for
    from mpqc.targets import load_target
    from mpqc.tuning import knob_space, tune_layer

    target = load_target(target_name)
    dims = _parse_ints(shape, 7, "--shape")
    for pair in bit_pairs:
        a_bits, w_bits = _parse_ints(pair.replace("x", ","), 2, "--bits")
        spec = conv_spec_for(*dims, a_bits, w_bits, target)
        best = tune_layer(spec, target, log_path, knob_space(trials, target.schedule),
                          repeats=repeats,
                          progress=lambda it: tqdm(it, desc=f"tune {spec.name}", unit="knobs"))
        if best is None:
            raise BuildError(f"tuning {spec.name} on {target.name}: no knob choice built and "
                             f"ran exactly; see the error records in {log_path}")
        chosen, knobs, total_ms = best
        click.echo(f"{spec.name}: best {total_ms:.4f} ms (pack + conv) with "
                   f"{chosen.word_bits}-bit words and {knobs.to_json()}")


class _BenchGroup(click.Group):
    """`mpqc bench kernels ...` or `mpqc bench FILE.so ...` (the library benchmark).

    An argument that names no subcommand is taken as the library to benchmark.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-") \
                and "library" in self.commands:
            args = ["library", *args]
        return super().parse_args(ctx, args)


@main.group("bench", cls=_BenchGroup)
def bench_group():
    """Benchmarks against peers (same run, same threads): `mpqc bench kernels` for the
    bit-serial kernels, `mpqc bench FILE.so` for a compiled library."""


@bench_group.command("kernels")
@click.option("--target", "target_name", default="host", show_default=True,
              help="Target name or .json path; must run on this machine.")
@click.option("--shape", "shape_names", multiple=True, default=["resnet18.layer1"],
              show_default=True, help="Named conv shape (resnet18.layer1..4, resnet20.*); repeat.")
@click.option("--bits", "bit_pairs", multiple=True, default=["1x1", "2x2"], show_default=True,
              metavar="AxW", help="Activation x weight bits; repeat for several pairs.")
@click.option("--threads", default=1, show_default=True, help="Threads for every engine.")
@click.option("--repeats", default=30, show_default=True, help="Timed samples (median reported).")
@click.option("--tuning-log", type=click.Path(dir_okay=False), default=None,
              help="Time the mpqc kernel with the best knobs of this `mpqc tune` log.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the results here as a JSON list.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of speedup over torch fp32 vs a*w, with the roofline.")
def bench_kernels_cmd(target_name, shape_names, bit_pairs, threads, repeats, tuning_log,
                      json_path, plot_path):
    """Time mpqc bit-serial convs against torch fp32, onnxruntime fp32/int8, untuned
    TVM topi bit-serial and the measured popcount roofline of this CPU.

    The roofline is a C loop of AND + popcount over L1-resident, cache-line aligned
    words (scalar popcnt, AVX2 nibble lookup and, where the CPU has it, AVX-512
    VPOPCNTDQ: the fastest one), built with the system compiler at -O3 -march=native,
    measured before and after the kernels (the faster kept), scaled by a*w*MACs.
    Medians of repeats after warm-up.
    """
    from tqdm import tqdm

    from mpqc.bench.kernels import bench_kernels, plot_speedups
    from mpqc.bench.shapes import get_shape
    from mpqc.targets import load_target
    from mpqc.tuning import best_variant

    target = load_target(target_name)
    shapes = [get_shape(name) for name in shape_names]
    pairs = [_parse_ints(p.replace("x", ","), 2, "--bits") for p in bit_pairs]
    results = bench_kernels(shapes, pairs, threads, target,
                            variant_for=lambda spec: best_variant(tuning_log, spec, target),
                            repeats=repeats,
                            progress=lambda it: tqdm(it, desc="shapes", unit="shape"))
    rows = [[r.shape, f"{r.bits[0]}x{r.bits[1]}", f"{r.mpqc_ms:.3f}", f"{r.roofline_ms:.3f}",
             f"{r.roofline_ms / r.mpqc_ms:.0%}", f"{r.torch_fp32_ms / r.mpqc_ms:.2f}x",
             f"{r.ort_int8_ms / r.mpqc_ms:.2f}x", f"{r.tvm_topi_ms / r.mpqc_ms:.2f}x",
             "yes" if r.mpqc_exact else "NO"] for r in results]
    click.echo(_table(rows, ["shape", "bits", "mpqc ms", "roofline ms", "of roofline",
                             "vs torch fp32", "vs ort int8", "vs topi", "exact"]))
    click.echo(f"{threads} thread(s), {results[0].cpu}, roofline "
               f"{results[0].roofline_gbmacs:.0f} G binary MAC/s; torch fp32 / ort fp32 / "
               f"ort int8 ms: " + "; ".join(
                   f"{r.shape} {r.torch_fp32_ms:.3f} / {r.ort_fp32_ms:.3f} / {r.ort_int8_ms:.3f}"
                   for r in {r.shape: r for r in results}.values()))
    if json_path:
        Path(json_path).write_text(json.dumps([r.to_json() for r in results], indent=2))
    if plot_path:
        plot_speedups(results, plot_path)
    if not all(r.mpqc_exact for r in results):
        sys.exit(1)


def _rpc_device(target, tracker: str | None, key: str | None):
    if tracker is None:
        if key is not None:
            raise click.BadParameter("--rpc-key needs --rpc-tracker", param_hint="--rpc-key")
        return None
    from mpqc.remote import RpcDevice
    key = key or target.rpc_key
    if not key:
        raise click.BadParameter(f"target {target.name} names no RPC key; pass --rpc-key",
                                 param_hint="--rpc-key")
    return RpcDevice.parse(tracker, key)


def _parse_ints(text: str, count: int, hint: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise click.BadParameter(f"{text!r} is not {count} comma-separated integers",
                                 param_hint=hint)
    return values


def _parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    dims = _parse_ints(text, 3, "--input-shape")
    if min(dims) < 1:
        raise click.BadParameter(f"{text!r}: sizes must be positive", param_hint="--input-shape")
    return dims  # type: ignore[return-value]


# Commands of the larger subsystems live beside their own code; each module defines
# register(main). Importing them here (after every helper above exists) keeps one group.
_COMMAND_MODULES = ("mpqc.cli_latency", "mpqc.cli_search", "mpqc.cli_deploy",
                    "mpqc.cli_pipeline")


def _register_command_modules() -> None:
    import importlib
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(main)


_register_command_modules()


if __name__ == "__main__":  # pragma: no cover
    main()
