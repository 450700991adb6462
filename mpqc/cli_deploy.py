"""Deployment commands: compile, run, verify, export-onnx and `bench FILE.so`.

Thin: each command parses options and calls one function of mpqc.build / mpqc.runtime.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mpqc.cli import _echo_json, _model_options, _rpc_device, _table


def _network_options(command):
    command = click.option("--input-shape", default=None, metavar="C,H,W",
                           help="Input shape (default: the built-in model's).")(command)
    command = click.option("--calibration", default=64, show_default=True,
                           help="Training images used to calibrate the quantizers.")(command)
    command = click.option("--data", "data_spec", default=None,
                           help="Dataset for calibration and normalisation (mnist, "
                                "cifar10:DIR, imagefolder:PATH).")(command)
    command = click.option("--config", "config_path", default=None,
                           type=click.Path(dir_okay=False),
                           help="Bit configuration JSON (from `mpqc search`).")(command)
    command = click.option("--bits", "bits", default=None, metavar="uniform:A,W",
                           help="Uniform configuration, e.g. uniform:2,2.")(command)
    command = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                           help="Quantized checkpoint (fine-tuned weights and bits).")(command)
    return _model_options(command)


def _network_spec(model_spec, weights, checkpoint, bits, config_path, data_spec, calibration,
                  input_shape):
    from mpqc.build.network import NetworkSpec
    if bits and config_path:
        raise click.BadParameter("give --bits or --config, not both", param_hint="--bits")
    if not (bits or config_path or checkpoint):
        raise click.BadParameter("give --bits uniform:A,W, --config FILE or --checkpoint",
                                 param_hint="--bits")
    if bits and not bits.startswith("uniform:"):
        raise click.BadParameter(f"{bits!r}: write uniform:A,W", param_hint="--bits")
    shape = ()
    if input_shape:
        try:
            shape = tuple(int(x) for x in input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3:
            raise click.BadParameter(f"{input_shape!r} is not C,H,W", param_hint="--input-shape")
    return NetworkSpec(model=model_spec, weights=weights, checkpoint=checkpoint,
                       config=bits or config_path, data=data_spec, calibration=calibration,
                       input_shape=shape)


@click.command("compile")
@_network_options
@click.option("--target", "target_name", default="host", show_default=True,
              help="Target name or .json path (ARM64 targets are cross-compiled).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The library to write (FILE.so; FILE.manifest.json is written beside).")
@click.option("--tuning-log", type=click.Path(dir_okay=False), default=None,
              help="Use the best kernel variants of this `mpqc tune` log.")
@click.option("--batch", default=1, show_default=True, help="Batch the library is built for.")
@click.option("--latency-model", type=click.Path(dir_okay=False), default=None,
              help="Latency model of the target (`mpqc fit`): predict the built "
                   "configuration (kernels + measured glue, the target's default threads "
                   "or 1) into the manifest.")
@click.option("--predicted-ms", type=float, default=None,
              help="Predicted latency to record in the manifest (overrides "
                   "--latency-model's total).")
@click.option("--budget-ms", type=float, default=None, help="Latency budget to record.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def compile_cmd(model_spec, weights, checkpoint, bits, config_path, data_spec, calibration,
                input_shape, target_name, out_path, tuning_log, batch, latency_model,
                predicted_ms, budget_ms, as_json):
    """Compile a quantized network into a shared library for a target.

    The network is the model with --weights quantized at --bits/--config (calibrated on
    --data), or a --checkpoint saved by the fine-tune step. Quantized convolutions
    become bit-serial kernels, the 8-bit first and last layers and the glue Relax ops;
    the library takes the float NCHW image and returns logits.
    """
    from mpqc.build.compile import compile_library
    from mpqc.targets import load_target

    spec = _network_spec(model_spec, weights, checkpoint, bits, config_path, data_spec,
                         calibration, input_shape)
    result = compile_library(spec, load_target(target_name), out_path, tuning_log=tuning_log,
                             batch=batch, predicted_ms=predicted_ms, budget_ms=budget_ms,
                             latency_model=latency_model)
    if as_json:
        _echo_json(result.manifest)
        return
    rows = [[l["name"], f"{l['a']}x{l['w']}", l["impl"], "x".join(map(str, l["in_shape"])),
             str(l.get("word_bits", "-"))] for l in result.manifest["layers"]]
    click.echo(_table(rows, ["layer", "bits", "kernel", "input", "word"]))
    click.echo(f"wrote {result.library} ({result.manifest['sha256'][:12]}) and "
               f"{result.manifest_path.name} for {result.manifest['target']['name']} "
               f"in {result.seconds:.1f} s")
    prediction = result.manifest.get("prediction")
    if prediction:
        click.echo(f"predicted {prediction['total_ms']:.4f} ms on {prediction['threads']} "
                   f"thread(s) (glue {prediction['glue_ms']:.4f} ms"
                   + ("" if prediction["glue_measured"] else ", not measured") + ")")


def _device_options(command):
    command = click.option("--rpc-key", default=None,
                           help="Device key at the tracker (default: the target's).")(command)
    return click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
                        help="Run on a remote device registered at this TVM RPC "
                             "tracker.")(command)


def _device_for(library, tracker, key):
    if tracker is None and key is None:
        return None
    from mpqc.build.compile import read_manifest
    from mpqc.targets import target_from_dict
    target = target_from_dict(read_manifest(library)["target"], str(library))
    return _rpc_device(target, tracker, key)


@click.command("run")
@click.argument("library", type=click.Path(dir_okay=False, exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--top", default=3, show_default=True, help="Classes to print per image.")
@_device_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run_cmd(library, images, top, rpc_tracker, rpc_key, as_json):
    """Classify image files with a compiled library and print the top classes."""
    from mpqc import runtime

    lib = runtime.load(library, device=_device_for(library, rpc_tracker, rpc_key))
    logits = lib(runtime.read_images(images, lib.manifest))
    results = []
    for path, row in zip(images, logits):
        order = row.argsort()[::-1][:top]
        results.append({"image": path, "top": [{"class": int(c), "logit": float(row[c])}
                                                for c in order]})
    if as_json:
        _echo_json(results)
        return
    for r in results:
        click.echo(f"{r['image']}: " + ", ".join(f"{t['class']} ({t['logit']:.3f})"
                                                 for t in r["top"]))


@click.command("verify")
@click.argument("library", type=click.Path(dir_okay=False, exists=True))
@click.option("--images", "count", default=8, show_default=True,
              help="Test images of the manifest's data (random normal images without data).")
@click.option("--accuracy", is_flag=True,
              help="Also score the library's top-1 accuracy on its data's test split.")
@click.option("--accuracy-images", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --accuracy: N random test images instead of all of them.")
@_device_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_cmd(library, count, accuracy, accuracy_images, rpc_tracker, rpc_key, as_json):
    """Check a library against the integer reference rebuilt from its manifest.

    Every quantized layer's integers must be equal; logits agree up to the float
    rounding of the final rescale. Exits 1 when not exact, naming the first layer
    that differs. With --accuracy the library also classifies the test split of the
    data it was built with, on the same device.
    """
    from mpqc.build.accuracy import library_accuracy
    from mpqc.build.verify import verify_library

    device = _device_for(library, rpc_tracker, rpc_key)
    result = verify_library(library, count=count, device=device)
    scored = (library_accuracy(library, accuracy_images, device, progress=not as_json)
              if accuracy or accuracy_images else None)
    if as_json:
        _echo_json({**result.to_json(),
                    **({"library_accuracy": scored.to_json()} if scored else {})})
    else:
        rows = [[c.name, c.kind, "yes" if c.equal else f"NO ({c.mismatches})",
                 f"{c.max_abs_diff:.3g}"] for c in result.layers]
        click.echo(_table(rows, ["op", "kind", "equal", "max |diff|"]))
        click.echo(f"{result.library} on {result.device}, {result.source}: "
                   f"{'exact' if result.exact else 'NOT exact, first: ' + result.first_mismatch}"
                   f", logits max |diff| {result.max_abs_diff:.3g}, top-1 agreement "
                   f"{result.top1_agreement:.0%}")
        if scored:
            click.echo(f"accuracy {scored.accuracy:.2%} top-1 on {scored.images} of "
                       f"{scored.test_size} test images ({scored.seconds:.1f} s)")
    if not result.exact:
        sys.exit(1)


@click.command("export-onnx")
@_network_options
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write.")
def export_onnx_cmd(model_spec, weights, checkpoint, bits, config_path, data_spec,
                    calibration, input_shape, out_path):
    """Write the quantized network as QDQ ONNX (codes in int8/uint8 containers)."""
    from mpqc.build.network import build_quantized_model
    from mpqc.build.onnx_export import export_qdq_onnx

    spec = _network_spec(model_spec, weights, checkpoint, bits, config_path, data_spec,
                         calibration, input_shape)
    model, shape = build_quantized_model(spec)
    info = export_qdq_onnx(model, shape, out_path)
    click.echo(f"wrote {out_path}: {info['quantized_layers']} quantized layers, "
               f"{info['nodes']} nodes")


@click.command("library")
@click.argument("library", type=click.Path(dir_okay=False, exists=True))
@click.option("--peers", is_flag=True,
              help="Also time torch fp32, onnxruntime fp32 and onnxruntime int8 (same run).")
@click.option("--threads", default=1, show_default=True, help="Threads for every engine.")
@click.option("--repeats", default=30, show_default=True, help="Timed samples (median).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the result here as JSON.")
def bench_library_cmd(library, peers, threads, repeats, json_path):
    """Time a compiled library at batch 1 (and its peers with --peers)."""
    from mpqc.build.bench import bench_library

    result = bench_library(library, peers=peers, threads=threads, repeats=repeats)
    rows = [[name, f"{t['median_ms']:.3f}", f"{t['min_ms']:.3f}", f"{t['max_ms']:.3f}",
             f"{t['median_ms'] / result['mpqc_ms']:.2f}x"]
            for name, t in result["timings"].items()]
    click.echo(_table(rows, ["engine", "median ms", "min ms", "max ms", "vs mpqc"]))
    extra = [f"{k} {result[k]:.3f} ms" for k in ("predicted_ms", "budget_ms")
             if result.get(k) is not None]
    click.echo(f"{result['library']}, {threads} thread(s), {result['cpu']}"
               + ("; " + ", ".join(extra) if extra else ""))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


def register(main: click.Group) -> None:
    for command in (compile_cmd, run_cmd, verify_cmd, export_onnx_cmd):
        main.add_command(command)
    main.commands["bench"].add_command(bench_library_cmd, "library")
