"""Options shared by several commands (search, sweep, pipeline): one definition each."""
from __future__ import annotations

import click

lr_option = click.option(
    "--lr", type=float, default=1e-3, show_default=True,
    help="Adam learning rate of the weights in the search and the fine-tuning (cosine to "
         "0). 1-bit activations may need 1e-4 (at 1e-3 ResNet-20 with them collapsed to a "
         "constant output); with 2-bit activations 3e-3 learns faster than 1e-3 (ResNet-20 "
         "a2w1 from fp32: 69% vs 59% test accuracy after 300 steps).")

gamma_option = click.option(
    "--gamma", "gamma_max", type=float, default=0.05, show_default=True,
    help="BP-NAS Prob-1 weight reached at the end of the search (annealed from 0); "
         "larger makes the strengths one-hot sooner.")

spend_slack_option = click.option(
    "--spend-slack/--argmax-only", default=True, show_default=True,
    help="After the argmax, raise bits while the configuration stays within the budget "
         "(with --choice loss: only raises that lower the validation loss, best per ms).")

choice_option = click.option(
    "--choice", type=click.Choice(["loss", "strengths"]), default="loss", show_default=True,
    help="How the argmax is moved into the budget (and, with --spend-slack, up to it): "
         "'loss' prices every one-step move by the supernet's loss on 2048 validation "
         "images (a minute or two on ResNet-20); 'strengths' by the strengths alone, "
         "which near one-hot cannot tell a harmless drop from a costly one.")


fp32_finetune_option = click.option(
    "--fp32-finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
    help="With --weights: first fine-tune the fp32 network on this data for N epochs "
         "(Adam 1e-3, cosine). The quantized network starts from it and it is the fp32 "
         "accuracy reported: a checkpoint trained on other pixels (CIFAR-10 re-encoded as "
         "JPEG, say) is otherwise a reference that flatters the quantized network.")

distill_option = click.option(
    "--distill", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
    help="Knowledge distillation in the fine-tuning (and the uniform baselines): the loss "
         "is (1-D) x cross-entropy + D x KL(fp32 network || quantized network). 0.5-0.9 "
         "helps at 1-2 bits; one fp32 forward pass per batch more.")

finetune_from_option = click.option(
    "--finetune-from", type=click.Choice(["supernet", "fp32"]), default="supernet",
    show_default=True,
    help="Where the chosen configuration's fine-tuning starts: the supernet's shared "
         "weights and quantizer steps as the search left them, or the fp32 weights with "
         "steps calibrated for that configuration (how the uniform baselines start). The "
         "shared weights serve every bit-width at once; after a short search the fp32 "
         "ones are often the better start for a long fine-tune.")


def schedule_options(command):
    """The training schedule of a search (search, sweep, pipeline): epochs of each phase,
    the fp32 fine-tune before it, distillation and where the fine-tuning starts."""
    for option in reversed((
            click.option("--epochs", default=2, show_default=True,
                         help="Search epochs (supernet training)."),
            click.option("--finetune-epochs", default=1, show_default=True,
                         help="QAT epochs of the chosen configuration (cosine learning "
                              "rate over them)."),
            click.option("--fp32-epochs", default=2, show_default=True,
                         help="fp32 training epochs when no --weights are given."),
            fp32_finetune_option, distill_option, finetune_from_option)):
        command = option(command)
    return command


def margin_option(default: float):
    return click.option(
        "--margin", type=click.FloatRange(0.0, 0.5), default=default, show_default=True,
        help="Keep the chosen configuration's predicted latency under (1 - margin) x the "
             "budget: a compiled library measures within about 2% of its prediction, "
             "either side, and the search otherwise fills the budget to the last "
             "microsecond.")


a_bits_option = click.option(
    "--a-bits", default=None, metavar="BITS",
    help="Activation candidates (default: --bits). `--a-bits 2,3,4` keeps 1-bit "
         "activations out of the search: ResNet-20 with them trains far worse than with "
         "1-bit weights at about the same latency.")

w_bits_option = click.option(
    "--w-bits", default=None, metavar="BITS", help="Weight candidates (default: --bits).")
