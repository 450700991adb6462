"""`mpqc search`: latency-constrained mixed-precision search (EBS / BP-NAS)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mpqc.cli_options import (a_bits_option, choice_option, gamma_option, lr_option,
                              margin_option, schedule_options, spend_slack_option,
                              w_bits_option)


@click.command("search")
@click.option("--model", "model_spec", required=True, help="resnet20, democnn or pkg.mod:fn.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Pretrained fp32 state dict (without it a short fp32 training runs first).")
@click.option("--data", "data_spec", required=True, help="mnist, cifar10:DIR or imagefolder:PATH.")
@click.option("--target", "target_name", default="host", show_default=True)
@click.option("--cost", type=click.Choice(["latency", "bitops"]), default=None,
              help="Layer cost: predicted latency (needs --latency-model) or BitOPs. "
                   "Default: latency when --latency-model is given, else bitops.")
@click.option("--latency-model", type=click.Path(dir_okay=False), default=None,
              help="Latency model of the target (`mpqc fit`).")
@click.option("--budget-ms", type=float, default=None, help="Cost budget (in the cost's unit).")
@click.option("--budget-ratio", type=float, default=None,
              help="Budget as R x the cost of the uniform configuration at the largest bits.")
@click.option("--method", type=click.Choice(["ebs", "bpnas"]), default="bpnas", show_default=True)
@click.option("--bits", default="1,2,3,4", show_default=True, help="Candidate bit-widths (a and w).")
@a_bits_option
@w_bits_option
@click.option("--uniform", default=None, metavar="A,W",
              help="Train a uniform baseline with the same schedule instead of searching.")
@click.option("--train-config", type=click.Path(dir_okay=False), default=None, metavar="JSON",
              help="Train this configuration (a search result or {layer: [a, w]}) the way "
                   "--uniform trains its baseline, instead of searching: a searched "
                   "configuration retrained with the baselines' schedule.")
@schedule_options
@lr_option
@click.option("--lam", type=float, default=1.0, show_default=True, help="EBS cost weight.")
@click.option("--mu", type=float, default=0.01, show_default=True, help="BP-NAS barrier weight.")
@gamma_option
@click.option("--clip-k", type=float, default=3.0, show_default=True,
              help="Scale-clip: weights clipped to +-k mean|W| in the supernet (0: off).")
@spend_slack_option
@choice_option
@margin_option(0.0)
@click.option("--subset", type=int, default=None, help="Use N training images (and N/5 val/test).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="Threads of the latency table.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Result JSON; the checkpoint (resume) and the fine-tuned model go beside it.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def search_cmd(model_spec, weights, data_spec, target_name, cost, latency_model, budget_ms,
               budget_ratio, method, bits, a_bits, w_bits, uniform, train_config, epochs,
               finetune_epochs,
               fp32_epochs, fp32_finetune_epochs, distill, finetune_from, lr, lam, mu, gamma_max,
               clip_k, spend_slack, choice, margin, subset, batch_size, seed, threads, out_path,
               quiet):
    """Search a bit-width pair per layer under a latency budget, then fine-tune it.

    Alternates weight steps (train split) and strength steps (validation split) of an
    EBS supernet; `bpnas` adds the soft barrier that keeps the expected cost inside the
    budget and the annealed Prob-1 regularizer. The chosen configuration always meets
    the budget (predicted). A killed search resumes from its checkpoint (--out + .ckpt).

    \b
      mpqc search --model democnn --data mnist --budget-ratio 0.3 --out search.json
      mpqc search --model resnet20 --weights resnet20.th --data cifar10:DIR \\
          --latency-model lm.json --budget-ratio 0.4 --epochs 5 --out search.json
    """
    import torch

    from mpqc.search.distributed import join_world
    from mpqc.search.driver import SearchRequest, candidate_bits, search_to_files
    from mpqc.search.loop import SearchSettings

    if (budget_ms is None) == (budget_ratio is None):
        raise click.UsageError("give exactly one of --budget-ms and --budget-ratio")
    cost = cost or ("latency" if latency_model else "bitops")
    if cost == "latency" and not latency_model:
        raise click.UsageError("--cost latency needs --latency-model (make one with "
                               "`mpqc measure` and `mpqc fit`), or use --cost bitops")
    if budget_ratio is not None and budget_ratio <= 0:
        raise click.BadParameter("must be positive", param_hint="--budget-ratio")
    uniform_pair = None
    if uniform:
        try:
            uniform_pair = tuple(int(x) for x in uniform.split(","))
            assert len(uniform_pair) == 2
        except (ValueError, AssertionError):
            raise click.BadParameter(f"{uniform!r} is not A,W", param_hint="--uniform") from None
    if uniform_pair and train_config:
        raise click.UsageError("give --uniform or --train-config, not both")
    for name, value in (("--lam", lam), ("--mu", mu), ("--gamma", gamma_max),
                        ("--clip-k", clip_k), ("--epochs", epochs),
                        ("--finetune-epochs", finetune_epochs), ("--fp32-epochs", fp32_epochs)):
        if value < 0:
            raise click.BadParameter("must not be negative", param_hint=name)
    if lr <= 0:
        raise click.BadParameter("must be positive", param_hint="--lr")
    request = SearchRequest(model=model_spec, data=data_spec, out=Path(out_path), weights=weights,
                            target=target_name, cost=cost, latency_model=latency_model,
                            budget_ms=budget_ms, budget_ratio=budget_ratio, bits=bits,
                            a_bits=a_bits, w_bits=w_bits, uniform=uniform_pair,
                            fixed_config=train_config, subset=subset, threads=threads)
    candidate_bits(request)  # bits outside 1..8 fail before any data is read
    settings = SearchSettings(method=method, epochs=epochs, finetune_epochs=finetune_epochs,
                              fp32_epochs=fp32_epochs, fp32_finetune_epochs=fp32_finetune_epochs,
                              distill=distill, finetune_from=finetune_from,
                              batch_size=batch_size, lr=lr, lam=lam, mu=mu,
                              gamma_max=gamma_max, clip_k=clip_k or None,
                              spend_slack=spend_slack, choice=choice, margin=margin, seed=seed,
                              progress=not quiet)
    world = join_world()
    if world.distributed:  # the processes share the machine's cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world.size))
    report = search_to_files(request, settings, world)
    if report is None:
        return
    click.echo(f"{report['method']}: predicted {report['predicted_ms']:.4g} {report['cost_unit']} "
               f"(budget {report['budget_ms']:.4g}), accuracy {report['accuracy']:.2%} "
               f"(fp32 {report['fp32_accuracy']:.2%}); wrote {out_path} and {report['checkpoint']}")


@click.command("sweep")
@click.option("--model", "model_spec", required=True, help="resnet20, democnn or pkg.mod:fn.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--data", "data_spec", required=True)
@click.option("--target", "target_name", default="host", show_default=True)
@click.option("--latency-model", type=click.Path(dir_okay=False), default=None,
              help="Latency model of the target (without it the cost is BitOPs).")
@click.option("--budget-ratios", default="0.3,0.5,0.7", show_default=True,
              help="Budgets to search, as ratios of the largest uniform configuration.")
@click.option("--uniform", "uniform_pairs", multiple=True, default=["2,2", "3,3"],
              show_default=True, help="Uniform baselines A,W trained with the same schedule.")
@click.option("--retrain", is_flag=True,
              help="Also train each searched configuration from the fp32 weights with the "
                   "baselines' schedule (`search --train-config`): configurations compared "
                   "under equal training.")
@click.option("--method", type=click.Choice(["ebs", "bpnas"]), default="bpnas", show_default=True)
@click.option("--bits", default="1,2,3,4", show_default=True)
@a_bits_option
@w_bits_option
@schedule_options
@lr_option
@click.option("--subset", type=int, default=None)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out-dir", required=True, type=click.Path(file_okay=False),
              help="One search JSON per run, sweep.json and pareto.png go here.")
@click.pass_context
def sweep_cmd(ctx, model_spec, weights, data_spec, target_name, latency_model, budget_ratios,
              uniform_pairs, retrain, method, bits, a_bits, w_bits, epochs, finetune_epochs,
              fp32_epochs, fp32_finetune_epochs, distill, finetune_from, lr, subset, batch_size,
              seed, out_dir):
    """Search at several budgets and train uniform baselines; draw the Pareto plot.

    Every run is an `mpqc search` with its own JSON (and checkpoint, so a killed sweep
    resumes); sweep.json lists the points and pareto.png shows accuracy against predicted
    cost, searched (and with --retrain, retrained) against uniform.
    """
    from mpqc.search.plot import plot_pareto

    try:
        ratios = [float(r) for r in budget_ratios.split(",")]
    except ValueError:
        raise click.BadParameter(f"{budget_ratios!r} is not a list of numbers",
                                 param_hint="--budget-ratios") from None
    out = Path(out_dir)
    common = dict(model_spec=model_spec, weights=weights, data_spec=data_spec,
                  target_name=target_name, cost=None, latency_model=latency_model,
                  budget_ms=None, method=method, bits=bits, a_bits=a_bits, w_bits=w_bits,
                  epochs=epochs, finetune_epochs=finetune_epochs, fp32_epochs=fp32_epochs,
                  fp32_finetune_epochs=fp32_finetune_epochs, distill=distill,
                  finetune_from=finetune_from, lr=lr, subset=subset,
                  batch_size=batch_size, seed=seed, threads=1, quiet=True)  # others: defaults
    runs = []
    for r in ratios:
        runs.append((f"{method} {r:g}", "searched", dict(budget_ratio=r, uniform=None),
                     out / f"search-{r:g}.json"))
        if retrain:   # the searched JSON exists by the time this run starts
            runs.append((f"{method} {r:g} retrained", "retrained",
                         dict(budget_ratio=r, uniform=None,
                              train_config=str(out / f"search-{r:g}.json")),
                         out / f"retrained-{r:g}.json"))
    runs += [(f"uniform {u}", "uniform", dict(budget_ratio=1.0, uniform=u),
              out / f"uniform-{u.replace(',', 'x')}.json") for u in uniform_pairs]
    points = []
    for label, kind, extra, path in runs:
        click.echo(f"== {label}")
        ctx.invoke(search_cmd, **common, **{"train_config": None, **extra}, out_path=str(path))
        result = json.loads(path.read_text())
        points.append({"label": label, "kind": kind, "file": path.name,
                       "predicted": result["predicted_ms"], "budget": result["budget_ms"],
                       "accuracy": result["accuracy"], "unit": result["cost_unit"]})
    unit = points[0]["unit"]
    (out / "sweep.json").write_text(json.dumps({"model": model_spec, "data": data_spec,
                                                "cost_unit": unit, "points": points}, indent=2))
    plot_pareto(points, unit, str(out / "pareto.png"), f"{model_spec}, {method}")
    from mpqc.cli import _table
    click.echo(_table([[p["label"], f"{p['predicted']:.4g}", f"{p['budget']:.4g}",
                        f"{p['accuracy']:.2%}"] for p in points],
                      ["run", f"predicted {unit}", "budget", "accuracy"]))
    click.echo(f"wrote {out / 'sweep.json'} and {out / 'pareto.png'}")


def register(group: click.Group) -> None:
    group.add_command(search_cmd)
    group.add_command(sweep_cmd)
