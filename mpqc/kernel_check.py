"""Build one bit-serial convolution for a target, check it against numpy, time it.

This is what a compiler engineer runs first on a new CPU: does the kernel compute the
right integers there, and how fast is it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mpqc.errors import ConfigError, DeviceError
from mpqc.schedules import ConvSpec, Epilogue, Knobs, pack_word_for
from mpqc.schedules import reference as ref
from mpqc.schedules.requant import requant_epilogue


@dataclass(frozen=True)
class KernelCheck:
    spec: str
    target: str
    a_bits: int
    w_bits: int
    knobs: dict
    exact: bool
    mismatches: int
    median_ms: float | None
    min_ms: float | None
    max_ms: float | None
    gbmacs: float | None  # binary MACs per second (a * w * MACs / time), in G

    def to_json(self) -> dict:
        return asdict(self)


def conv_spec_for(h: int, w: int, cin: int, cout: int, kernel: int, stride: int,
                  padding: int, a_bits: int, w_bits: int, target) -> ConvSpec:
    """A spec whose pack word fits both the layer and the target, with the epilogue the
    network uses between quantized layers: requantization to a-bit codes, in int32
    arithmetic when the constants of random_operands allow it (as the lowering does)."""
    spec = ConvSpec(n=1, h=h, w=w, cin=cin, cout=cout, kernel=kernel, stride=stride,
                    padding=padding, a_bits=a_bits, w_bits=w_bits,
                    word_bits=pack_word_for(cin, target.pack_word_bits),
                    epilogue=Epilogue("codes", out_bits=a_bits))
    scale, offset = _spread(spec)
    return spec.with_(epilogue=requant_epilogue(spec, scale, offset)[0])


def _spread(spec: ConvSpec):
    """A float rescale that spreads the output codes of random operands (~4 sigma)."""
    codes, weights = _random_codes(spec)
    acc = ref.conv_int(codes, weights, spec)
    levels = 1 << spec.epilogue.out_bits
    scale = levels / (4 * max(float(acc.std()), 1.0))
    return (np.full(spec.cout, scale), np.full(spec.cout, levels / 2 - scale * float(acc.mean())))


def _random_codes(spec: ConvSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << spec.a_bits, (spec.n, spec.h, spec.w, spec.cin)).astype(np.uint8)
    if spec.w_bits == 1:
        weights = rng.choice([-1, 1], (spec.kernel, spec.kernel, spec.cin, spec.cout))
    else:
        half = 1 << (spec.w_bits - 1)
        weights = rng.integers(-half, half, (spec.kernel, spec.kernel, spec.cin, spec.cout))
    return codes, weights


def random_operands(spec: ConvSpec, seed: int = 0):
    codes, weights = _random_codes(spec, seed)
    scale, offset = _spread(spec)
    epilogue, mul, add = requant_epilogue(spec, scale, offset)
    if epilogue != spec.epilogue:
        raise ConfigError(f"{spec.name}: epilogue {spec.epilogue} does not fit its constants; "
                          "make the spec with conv_spec_for")
    return codes, weights, mul, add


def check_conv(spec: ConvSpec, target, knobs: Knobs | None = None, repeats: int = 10,
               time_it: bool = True, device=None) -> KernelCheck:
    """Compile for `target`, run on this machine (or on `device`, an RpcDevice), and
    compare with the numpy reference. Remote timings are not reported: they may come
    from an emulated board."""
    import tvm

    from mpqc.schedules.build import (build_conv, default_knobs, packed_weights,
                                      reference_input)
    from mpqc.targets import runs_on_host

    if device is None and not runs_on_host(target):
        raise DeviceError(f"target {target.name} ({target.arch}) cannot run on this machine; "
                          "check it on a device of that kind over TVM RPC "
                          "(--rpc-tracker HOST:PORT --rpc-key KEY)")
    knobs = knobs or default_knobs(target)
    codes, weights, mul, add = random_operands(spec)
    expected = ref.bitserial_conv2d(codes, weights, spec, mul, add)
    lib = build_conv(spec, target, knobs)
    args = [reference_input(codes, spec, knobs), packed_weights(weights, spec, knobs), mul, add,
            np.zeros(expected.shape, expected.dtype)]
    timing = [None, None, None]
    if device is not None:
        from mpqc.remote import run_remote
        out, _ = run_remote(lib, target, device, "main", args)
        mismatches = int((out != expected).sum())
        time_it = False
    else:
        dev = tvm.cpu()
        tensors = [tvm.runtime.tensor(a, dev) for a in args]
        lib["main"](*tensors)
        mismatches = int((tensors[-1].numpy() != expected).sum())
    if time_it:
        from mpqc.bench.timing import time_tvm
        measured = time_tvm(lib, "main", dev, tensors, repeats=repeats)
        timing = [measured.median_ms, measured.min_ms, measured.max_ms]
    gbmacs = (spec.a_bits * spec.w_bits * spec.macs / timing[0] / 1e6) if timing[0] else None
    return KernelCheck(spec=spec.name, target=target.name, a_bits=spec.a_bits,
                       w_bits=spec.w_bits, knobs=knobs.fit(spec).to_json(),
                       exact=mismatches == 0, mismatches=mismatches, median_ms=timing[0],
                       min_ms=timing[1], max_ms=timing[2], gbmacs=gbmacs)


def time_bitpack(spec: ConvSpec, target, repeats: int = 10, knobs: Knobs | None = None) -> float:
    """Median ms of the activation packing kernel of a layer (bit planes, or the lookup
    tables where the knobs take that kernel) on this machine."""
    import tvm

    from mpqc.bench.timing import time_tvm
    from mpqc.schedules.build import build_bitpack, default_knobs, packed_input

    dev = tvm.cpu()
    knobs = knobs or default_knobs(target)
    shape, dtype = packed_input(spec, knobs)
    args = [np.zeros((spec.n, spec.h, spec.w, spec.cin), np.uint8), np.zeros(shape, dtype)]
    return time_tvm(build_bitpack(spec, target, knobs), "main", dev,
                    [tvm.runtime.tensor(a, dev) for a in args], repeats=repeats).median_ms
