"""Options shared by several commands (search, sweep, pipeline): one definition each."""
from __future__ import annotations

import click

lr_option = click.option(
    "--lr", type=float, default=1e-3, show_default=True,
    help="Adam learning rate of the weights in the search and the fine-tuning (a "
         "pretrained network at 1-2 bits may need 1e-4: at 1e-3 ResNet-20 with 1-bit "
         "weights or activations collapses to a constant output).")

gamma_option = click.option(
    "--gamma", "gamma_max", type=float, default=0.05, show_default=True,
    help="BP-NAS Prob-1 weight reached at the end of the search (annealed from 0); "
         "larger makes the strengths one-hot sooner.")

spend_slack_option = click.option(
    "--spend-slack/--argmax-only", default=True, show_default=True,
    help="After the argmax, raise the bits the strengths want most per unit of cost "
         "while the configuration stays within the budget.")

def margin_option(default: float):
    return click.option(
        "--margin", type=click.FloatRange(0.0, 0.5), default=default, show_default=True,
        help="Keep the chosen configuration's predicted latency under (1 - margin) x the "
             "budget: a compiled library measures within about 2% of its prediction, "
             "either side, and the search otherwise fills the budget to the last "
             "microsecond.")
