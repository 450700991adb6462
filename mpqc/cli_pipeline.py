"""`mpqc pipeline`: every step from a PyTorch model to a verified, benchmarked .so."""
from __future__ import annotations

import sys

import click

from mpqc.cli_options import (a_bits_option, choice_option, gamma_option, lr_option,
                              margin_option, schedule_options, spend_slack_option,
                              w_bits_option)

from mpqc.pipeline.steps import RPC_ACCURACY_IMAGES, STEP_NAMES, STEPS


def _pairs(values: tuple[str, ...]) -> tuple[tuple[int, int], ...] | None:
    if not values:
        return None
    if values == ("none",):
        return ()
    pairs = []
    for text in values:
        try:
            a, w = (int(x) for x in text.split(","))
        except ValueError:
            raise click.BadParameter(f"{text!r} is not A,W", param_hint="--baseline") from None
        pairs.append((a, w))
    return tuple(pairs)


_STEP_HELP = "\n".join(f"  {s.name:10s} {s.doc}" for s in STEPS)


@click.command("pipeline", help=f"""Run the whole flow, from a PyTorch model to a verified .so.

Each step writes its artifact into --workdir and is skipped when that artifact is there
and its inputs (options and the artifacts it reads, hashed) are unchanged; a killed run
resumes where it stopped (the measurement database and the search checkpoint resume
inside their steps). The run ends with summary.json, report.md and plots in the workdir,
and exits 1 when the library is not exact or misses the budget. A --budget-ratio is
checked as a ratio: the uniform library at the largest bits is built and timed in the
same run, so a machine whose speed drifted since the measure step does not decide it;
a --budget-ort-ratio likewise against onnxruntime int8 timed alongside.

\b
Steps:
{_STEP_HELP}

\b
  mpqc pipeline --model democnn --data mnist --budget-ratio 0.5 --workdir out
  mpqc pipeline --model resnet20 --weights resnet20.th --data cifar10:DIR \\
      --budget-ratio 0.4 --epochs 5 --workdir r20
  mpqc pipeline --model resnet20 --weights resnet20.th --data cifar10:DIR \
      --budget-ort-ratio 0.5 --workdir r20-half-int8
""")
@click.option("--model", "model_spec", default="democnn", show_default=True,
              help="resnet20, democnn or package.module:function.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Pretrained fp32 state dict (without it a short fp32 training runs).")
@click.option("--input-shape", default=None, metavar="C,H,W", help="Input shape of a user model.")
@click.option("--data", "data_spec", default="mnist", show_default=True,
              help="mnist, cifar10:DIR or imagefolder:PATH.")
@click.option("--target", "target_name", default="host", show_default=True,
              help="Target name or .json path.")
@click.option("--budget-ms", type=float, default=None, help="Latency budget of the network (ms).")
@click.option("--budget-ratio", type=float, default=None,
              help="Budget as R x the predicted latency at the largest uniform bits.")
@click.option("--budget-ort-ratio", type=float, default=None, metavar="R",
              help="Budget as R x onnxruntime int8's latency of the model on this machine "
                   "(static QDQ, timed before the search: the fastest of 7 rounds; the "
                   "bench step checks the ratio against it timed alongside). Host "
                   "targets only.")
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Where every artifact goes (and where a rerun resumes).")
@click.option("--from-step", type=click.Choice(STEP_NAMES), default=None,
              help="Start here (this step runs again; earlier ones must be done).")
@click.option("--until-step", type=click.Choice(STEP_NAMES), default=None,
              help="Stop after this step.")
@click.option("--method", type=click.Choice(["ebs", "bpnas"]), default="bpnas", show_default=True)
@gamma_option
@lr_option
@spend_slack_option
@choice_option
@margin_option(0.03)
@click.option("--bits", default="1,2,3,4", show_default=True, help="Candidate bit-widths (a and w).")
@a_bits_option
@w_bits_option
@click.option("--baseline", "baselines", multiple=True, metavar="A,W",
              help="Uniform baseline for the Pareto plot (repeatable; 'none' for none). "
                   "Default: the smallest and the largest candidate bits.")
@schedule_options
@click.option("--subset", type=int, default=None, help="Use N training images.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True,
              help="Threads of the measured kernels and of the benchmark.")
@click.option("--random-shapes", default=24, show_default=True,
              help="Random layer shapes measured besides the model's, for the predictor.")
@click.option("--repeats", default=10, show_default=True, help="Timed samples per kernel.")
@click.option("--passes", default=2, show_default=True, type=click.IntRange(min=1),
              help="Whole measuring passes over the kernels; the latency model keeps each "
                   "kernel's fastest (see `mpqc measure --help`).")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure and verify on devices registered at this TVM RPC tracker.")
@click.option("--rpc-key", default=None, help="Device key (default: the target's).")
@click.option("--tuning-log", type=click.Path(dir_okay=False), default=None,
              help="Kernel variants from `mpqc tune` for measurement and build.")
@click.option("--accuracy-images", type=click.IntRange(min=0), default=None, metavar="N",
              help="The verify step also scores the library's own top-1 accuracy on N "
                   "random test images (0: not at all). Default: the test images the "
                   "fine-tuned model was scored on (the whole split, or its --subset "
                   f"share), at most {RPC_ACCURACY_IMAGES} on an RPC device.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pipeline_cmd(model_spec, weights, input_shape, data_spec, target_name, budget_ms,
                 budget_ratio, budget_ort_ratio, workdir, from_step, until_step, method, gamma_max, lr, spend_slack,
                 choice, margin,
                 bits, a_bits, w_bits, baselines, epochs, finetune_epochs, fp32_epochs,
                 fp32_finetune_epochs,
                 distill, finetune_from, subset, batch_size,
                 seed, threads, random_shapes, repeats, passes, rpc_tracker, rpc_key,
                 tuning_log, accuracy_images, quiet):
    import json
    import time

    from mpqc.cli import _parse_shape
    from mpqc.pipeline import PipelineConfig, Workspace, preflight, run_steps

    cfg = PipelineConfig(model=model_spec, data=data_spec, weights=weights,
                         input_shape=_parse_shape(input_shape), target=target_name,
                         budget_ms=budget_ms, budget_ratio=budget_ratio,
                         budget_ort_ratio=budget_ort_ratio, method=method,
                         gamma_max=gamma_max, lr=lr, spend_slack=spend_slack, choice=choice,
                         margin=margin,
                         bits=bits, a_bits=a_bits, w_bits=w_bits, epochs=epochs,
                         finetune_epochs=finetune_epochs,
                         fp32_epochs=fp32_epochs, fp32_finetune_epochs=fp32_finetune_epochs,
                         distill=distill, finetune_from=finetune_from, subset=subset,
                         batch_size=batch_size,
                         seed=seed, threads=threads, random_shapes=random_shapes,
                         repeats=repeats, passes=passes, baselines=_pairs(baselines),
                         rpc_tracker=rpc_tracker,
                         rpc_key=rpc_key, tuning_log=tuning_log,
                         accuracy_images=accuracy_images, progress=not quiet)
    preflight(cfg)
    ws = Workspace(workdir)
    start = time.perf_counter()

    def on_start(i, n, step):
        click.echo(f"[{i + 1}/{n}] {step.name}: {step.doc}", err=True)

    def on_done(outcome):
        facts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in outcome.facts.items() if not isinstance(v, (list, dict)))
        took = "" if outcome.status != "ran" else f" in {outcome.seconds:.1f} s"
        click.echo(f"      {outcome.status}{took}" + (f": {facts}" if facts else ""), err=True)

    outcomes = run_steps(STEPS, cfg, ws, from_step, until_step, on_start, on_done)
    click.echo(f"{len(outcomes)} step(s) in {time.perf_counter() - start:.0f} s; "
               f"artifacts in {ws.root}", err=True)
    if outcomes and outcomes[-1].name == "report":
        _print_summary(json.loads(ws.summary.read_text()), ws)


def _print_summary(s: dict, ws) -> None:
    from mpqc.cli import _table
    from mpqc.pipeline.report import accuracy_text, reference_name

    def ms(v):
        return "-" if v is None else f"{v:.4f}"

    click.echo(_table([[l["name"], str(l["a"]), str(l["w"])] for l in s["layers"]],
                      ["layer", "a", "w"]))
    click.echo(f"accuracy  {accuracy_text(s)}")
    click.echo(f"latency   measured {ms(s['measured_ms'])} ms, predicted {ms(s['predicted_ms'])}"
               f" ms, budget {ms(s['budget_ms'])} ms")
    if s.get("same_run"):
        r = s["same_run"]
        click.echo(f"          {r['ratio']:.3f}x the {reference_name(r)} timed alongside "
                   f"(budget ratio {r['budget_ratio']:g}: "
                   f"{'within' if r['within_budget'] else 'OVER'})")
    if s["measured_ms"]:
        click.echo(f"peers     torch fp32 {ms(s['torch_fp32_ms'])} ms "
                   f"({s['speedup_vs_torch_fp32']:.2f}x), onnxruntime int8 "
                   f"{ms(s['ort_int8_ms'])} ms ({s['speedup_vs_ort_int8']:.2f}x)")
    click.echo(f"verified  {'exact' if s['verified_exact'] else 'NOT exact'}")
    click.echo(f"library   {s['so_path']}\nmanifest  {s['manifest_path']}")
    click.echo(f"report    {ws.report}")
    for warning in s.get("warnings", []):
        click.echo(f"WARNING: {warning}", err=True)
    if not s["ok"]:
        for failure in s["failures"]:
            click.echo(f"FAILED: {failure}", err=True)
        sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(pipeline_cmd)
