"""Scheduled prim funcs and compiled modules of the bit-serial operators for a target."""
from __future__ import annotations

import tvm
from tvm import s_tir, te

from mpqc.errors import BuildError, ConfigError, last_line
from mpqc.schedules import FAMILIES, PACK_STYLES
from mpqc.schedules.compute import PACK, bitpack_nhwc, bitserial_conv2d_nhwc
from mpqc.schedules.pack_x86 import bitpack_movemask_prim_func, movemask_applies
from mpqc.schedules import lookup_x86
from mpqc.schedules import reference as ref
from mpqc.schedules.halves_x86 import half_words_apply, half_words_conv_prim_func
from mpqc.schedules.paired_x86 import paired_conv_prim_func, paired_lanes_apply
from mpqc.schedules.spec import ConvSpec
from mpqc.schedules.tiling import Knobs, schedule_conv
from mpqc.schedules.tir_pipeline import tir_pipeline


def default_knobs(target) -> Knobs:
    try:
        return FAMILIES[target.schedule](target.simd_bits)
    except KeyError:
        raise ConfigError(f"target {target.name}: no schedule family {target.schedule!r}; "
                          f"known: {', '.join(FAMILIES)}") from None


def conv_prim_func(spec: ConvSpec, knobs: Knobs, name: str = "main") -> tvm.tirx.PrimFunc:
    """The fused conv (packed input in, epilogue out), scheduled with `knobs`: the
    lookup-table, paired-lane or half-word kernel where the knobs ask for it and the
    layer fits, else the tiled."""
    if knobs.fit(spec).lookup_tables:
        return lookup_x86.lookup_conv_prim_func(spec, knobs.paired_tile_w, name)
    if knobs.paired_lanes and paired_lanes_apply(spec):
        return paired_conv_prim_func(spec, knobs.paired_tile_w, name, knobs.byte_counts)
    if knobs.half_words and half_words_apply(spec):
        return half_words_conv_prim_func(spec, knobs.paired_tile_w, name)
    inputs, out = bitserial_conv2d_nhwc(spec)
    func = te.create_prim_func([*inputs, out]).with_attr("global_symbol", name)
    sch = schedule_conv(s_tir.Schedule(func), spec, knobs)
    return sch.mod["main"].with_attr("global_symbol", name)


def pack_style(target) -> str:
    """How the target's family packs activations ("movemask" or "multiply")."""
    return PACK_STYLES.get(target.schedule, "multiply")


def bitpack_prim_func(spec: ConvSpec, name: str = "bitpack",
                      style: str = "multiply") -> tvm.tirx.PrimFunc:
    """uint8 NHWC codes -> padded bit planes; rows in parallel. "movemask" (x86) where
    the channels allow it (pack_x86.py), else the portable multiply gather."""
    if style == "movemask" and movemask_applies(spec):
        return bitpack_movemask_prim_func(spec, name)
    codes = te.placeholder((spec.n, spec.h, spec.w, spec.cin), "uint8", name="codes")
    planes = bitpack_nhwc(codes, spec)
    func = te.create_prim_func([codes, planes]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(PACK)
    n, h, w, i, cw, g = sch.get_loops(block)
    sch.parallel(sch.fuse(n, h))
    sch.unroll(g)   # at most 8 groups of 8 channels: straight-line loads, multiplies, ORs
    return sch.mod["main"].with_attr("global_symbol", name)


def uses_tables(spec: ConvSpec, knobs: Knobs) -> bool:
    """Whether the layer's conv reads lookup tables (lookup_x86.py) instead of planes."""
    return knobs.fit(spec).lookup_tables


def packed_input(spec: ConvSpec, knobs: Knobs) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of what the conv reads: bit planes, or lookup tables."""
    if uses_tables(spec, knobs):
        return lookup_x86.tables_shape(spec), "uint8"
    hp, wp = spec.padded_hw
    return (spec.n, hp, wp, spec.a_bits, spec.words), f"uint{spec.word_bits}"


def pack_input_prim_func(spec: ConvSpec, knobs: Knobs, name: str = "bitpack",
                         style: str = "multiply") -> tvm.tirx.PrimFunc:
    """uint8 NHWC codes -> what the conv of these knobs reads (packed_input)."""
    if uses_tables(spec, knobs):
        return lookup_x86.tables_prim_func(spec, name)
    return bitpack_prim_func(spec, name, style)


def reference_input(codes, spec: ConvSpec, knobs: Knobs):
    """numpy: what pack_input_prim_func computes."""
    if uses_tables(spec, knobs):
        return lookup_x86.tables_reference(codes, spec)
    return ref.pack_activations(codes, spec)


def packed_weights(weights, spec: ConvSpec, knobs: Knobs):
    """numpy: signed weight codes (KH, KW, Cin, Cout) in the layout of the knobs' conv."""
    if uses_tables(spec, knobs):
        return lookup_x86.pack_weights(weights, spec)
    return ref.pack_weights(weights, spec)


def compile_prim_func(func: tvm.tirx.PrimFunc, target, what: str):
    """tvm.compile for a target; failures name the operator and the target."""
    from mpqc.targets import tvm_target
    try:
        return tvm.compile(tvm.IRModule({func.attrs["global_symbol"]: func}), tvm_target(target),
                           tir_pipeline=tir_pipeline())
    except Exception as exc:  # TVM raises many error types; report them as one
        raise BuildError(f"building {what} for target {target.name} failed: "
                         f"{last_line(exc)}") from exc


def build_conv(spec: ConvSpec, target, knobs: Knobs | None = None):
    knobs = knobs or default_knobs(target)
    return compile_prim_func(conv_prim_func(spec, knobs), target, spec.name)


def build_bitpack(spec: ConvSpec, target, knobs: Knobs | None = None):
    """The input packing of the layer for the knobs (bit planes or lookup tables)."""
    knobs = knobs or default_knobs(target)
    return compile_prim_func(pack_input_prim_func(spec, knobs, "main", pack_style(target)),
                             target, f"input packing of {spec.name}")
