"""Time the bit-serial convolution kernels against each other on this host, alone.

For each shape and (a, w) pair: the tiled kernel, the paired-lane kernel (16-bit words),
the half-word kernel (16- and 32-bit words) and the lookup-table kernel, each where it
applies, with the host's default knobs otherwise; the input packing timed apart (bit
planes, or the lookup kernel's tables); outputs compared with the tiled kernel's (the
network's codes epilogue).

    .venv/bin/python tools/kernel_variants.py --shape 32,32,16,16,3,1,1 --bits 1x1 --bits 2x2
"""
from __future__ import annotations

from dataclasses import replace

import click
import numpy as np


def _time(spec, knobs, target, repeats):
    """(conv us, input packing us, conv output)."""
    import tvm

    from mpqc.bench.timing import pinned_threads, time_tvm
    from mpqc.latency.measure import build_layer, layer_arguments

    lib = build_layer(spec, knobs, target)
    pack_args, conv_args = layer_arguments(spec, knobs)
    tensors = [tvm.runtime.tensor(a) for a in conv_args]
    packing = [tvm.runtime.tensor(a) for a in pack_args]
    with pinned_threads(1):
        timing = time_tvm(lib, "conv", tvm.cpu(), tensors, repeats=repeats)
        pack = time_tvm(lib, "bitpack", tvm.cpu(), packing, repeats=repeats)
    return timing.median_ms * 1000, pack.median_ms * 1000, tensors[-1].numpy()


@click.command()
@click.option("--shape", "shapes", multiple=True, required=True,
              help="H,W,CIN,COUT,KERNEL,STRIDE,PADDING (repeatable).")
@click.option("--bits", "pairs", multiple=True, required=True, help="AxW, e.g. 2x2 (repeatable).")
@click.option("--repeats", default=200, show_default=True, help="Timed samples (median).")
def main(shapes, pairs, repeats):
    """Time the tiled, paired-lane, half-word and lookup-table convolution kernels of each
    shape and bit pair side by side on this host (1 thread, median; the input packing
    apart: bit planes, or the lookup kernel's tables), outputs checked equal."""
    from mpqc.latency.measure import layer_spec
    from mpqc.latency.records import LayerShape
    from mpqc.latency.space import Job
    from mpqc.targets import load_target

    target = load_target("host")
    for text in shapes:
        h, w, cin, cout, k, s, p = (int(v) for v in text.split(","))
        for pair in pairs:
            a, wb = (int(v) for v in pair.lower().split("x"))
            spec, knobs = layer_spec(Job(LayerShape("conv2d", h, w, cin, cout, k, s, p), a, wb),
                                     target)
            plain = replace(knobs, paired_lanes=False, half_words=False, lookup_from_a_bits=0)
            base_us, base_pack, base_out = _time(spec, plain.fit(spec), target, repeats)
            row = [f"{text} a{a}w{wb} word{spec.word_bits}: tiled {base_us:.1f} "
                   f"(+{base_pack:.1f} packing) us"]
            variants = (("paired", replace(plain, paired_lanes=True)),
                        ("half-word", replace(plain, half_words=True)),
                        ("lookup", replace(plain, lookup_from_a_bits=1)))
            for name, variant in variants:
                variant = variant.fit(spec)
                if not (variant.paired_lanes or variant.half_words or variant.lookup_tables):
                    continue
                us, pack, out = _time(spec, variant, target, repeats)
                same = "exact" if np.array_equal(out, base_out) else "DIFFERENT"
                row.append(f"{name} {us:.1f} (+{pack:.1f}) us "
                           f"({(base_us + base_pack) / (us + pack):.2f}x with packing, {same})")
            click.echo(", ".join(row))


if __name__ == "__main__":
    main()
