"""`mpqc bench kernels`: the mpqc kernel against its peers and the popcount roofline.

Everything for one shape is timed in one process, same thread count, same method
(median of repeats after warm-up), so the ratios hold on a shared, noisy machine.
The mpqc kernel is timed as the network runs it: the activation bit-packing kernel
plus the convolution with its fused integer requantization epilogue, codes in and codes
out (`mpqc_ms`; `mpqc_conv_ms` is the convolution alone). Weights are packed at build
time, as in the deployed library.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from mpqc.bench import peers
from mpqc.bench.roofline import Roofline, faster, measure_roofline, roofline_ms
from mpqc.bench.shapes import ConvShape
from mpqc.bench.timing import set_threads
from mpqc.errors import DeviceError


@dataclass(frozen=True)
class KernelBench:
    shape: str
    bits: tuple[int, int]
    threads: int
    mpqc_ms: float
    mpqc_conv_ms: float
    mpqc_exact: bool
    word_bits: int
    torch_fp32_ms: float
    ort_fp32_ms: float
    ort_int8_ms: float
    tvm_topi_ms: float
    roofline_ms: float
    roofline_gbmacs: float
    cpu: str
    knobs: dict

    def to_json(self) -> dict:
        out = asdict(self)
        out["bits"] = list(self.bits)
        return out


def _time_mpqc(shape: ConvShape, a: int, w: int, target, variant_for, repeats: int):
    from mpqc.kernel_check import check_conv, conv_spec_for, time_bitpack
    from mpqc.schedules.build import default_knobs

    spec = conv_spec_for(shape.h, shape.w, shape.cin, shape.cout, shape.kernel, shape.stride,
                         shape.padding, a, w, target)
    spec, knobs = (variant_for(spec) or (spec, default_knobs(target)))[:2]
    check = check_conv(spec, target, knobs, repeats=repeats)  # exact and timed, one build
    pack_ms = time_bitpack(spec, target, repeats)
    return (pack_ms + check.median_ms, check.median_ms, check.exact, knobs.fit(spec).to_json(),
            spec.word_bits)


def bench_kernels(shapes: Iterable[ConvShape], pairs: Iterable[tuple[int, int]], threads: int,
                  target, variant_for: Callable = lambda spec: None, repeats: int = 30,
                  roofline: Roofline | None = None,
                  progress: Callable[[Iterable], Iterable] = lambda it: it) -> list[KernelBench]:
    from mpqc.targets import runs_on_host

    if not runs_on_host(target):
        raise DeviceError(f"target {target.name} cannot run here; kernel benchmarks time "
                          "this machine's CPU (use `host` or a target it matches)")
    actual = set_threads(threads)
    if actual != threads:
        raise DeviceError(f"asked for {threads} threads, the TVM pool has {actual}")
    # the roofline is measured before and after the kernels and the faster kept: a
    # shared machine's slow spell during one measurement would flatter every kernel
    measured = None if roofline else measure_roofline()
    pairs = list(pairs)
    rows = []
    for shape in progress(list(shapes)):
        torch_ms = peers.torch_fp32(shape, threads, repeats).median_ms
        ort_ms = peers.ort_fp32(shape, threads, repeats).median_ms
        int8_ms = peers.ort_int8(shape, threads, repeats).median_ms
        for a, w in pairs:
            mpqc_ms, conv_ms, exact, knobs, word = _time_mpqc(shape, a, w, target, variant_for, repeats)
            topi_ms = peers.tvm_topi_bitserial(shape, a, w, threads, repeats).median_ms
            rows.append(dict(
                shape=shape.name, bits=(a, w), threads=threads, mpqc_ms=mpqc_ms,
                mpqc_conv_ms=conv_ms, mpqc_exact=exact, word_bits=word, torch_fp32_ms=torch_ms,
                ort_fp32_ms=ort_ms, ort_int8_ms=int8_ms, tvm_topi_ms=topi_ms, knobs=knobs,
                macs=shape.macs))
    roofline = roofline or faster(measured, measure_roofline())
    return [KernelBench(**{k: v for k, v in r.items() if k != "macs"},
                        # the roofline is per core: with n threads the floor is n times lower
                        roofline_ms=roofline_ms(r["macs"], *r["bits"], roofline) / threads,
                        roofline_gbmacs=roofline.best_gbmacs, cpu=roofline.cpu)
            for r in rows]


def plot_speedups(results: list[KernelBench], path: str) -> None:
    """Speedup over torch fp32 vs a*w, per shape, with the roofline curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in dict.fromkeys(r.shape for r in results):
        rows = sorted((r for r in results if r.shape == name), key=lambda r: r.bits[0] * r.bits[1])
        aw = [r.bits[0] * r.bits[1] for r in rows]
        ax.plot(aw, [r.torch_fp32_ms / r.mpqc_ms for r in rows], "o-", label=f"mpqc {name}")
        ax.plot(aw, [r.torch_fp32_ms / r.roofline_ms for r in rows], "k--", alpha=0.5,
                label=f"roofline {name}")
        ax.axhline(rows[0].torch_fp32_ms / rows[0].ort_int8_ms, color="tab:red", alpha=0.4,
                   label=f"onnxruntime int8 {name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("a x w (binary operations per MAC)")
    ax.set_ylabel("speedup over torch fp32")
    ax.set_title(f"bit-serial conv, {results[0].threads} thread(s), {results[0].cpu}")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
