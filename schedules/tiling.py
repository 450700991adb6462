"""The one bit-serial convolution schedule; target families differ only in knob values.

Output tile: `tile_w` output pixels (unrolled) x `tile_co` output channels (vectorized)
with its int32 accumulators in registers; every reduction loop (kernel window, words,
bit planes) runs outside the tile, so each packed activation word loaded is reused
`tile_co` times and each weight vector `tile_w` times. The epilogue is computed on the
tile right after its reduction, so the accumulators never go to memory. Rows run in
parallel across threads.
"""
from __future__ import annotations

from tvm import s_tir

from mpqc.schedules.compute import ACC, OUT, WINDOW_SUM
from mpqc.schedules.knobs import Knobs
from mpqc.schedules.spec import ConvSpec

def _tile_loops(sch: s_tir.Schedule, acc, spec: ConvSpec, knobs: Knobs) -> dict:
    """Name the accumulator's loops under the tile: compute_at drops unit loops."""
    extents = {"n": 1, "y": 1, "x": knobs.tile_w, "co": knobs.tile_co, "kh": spec.kernel,
               "kw": spec.kernel, "cw": spec.words, "i": spec.a_bits, "j": spec.w_bits}
    present = [name for name, extent in extents.items() if extent > 1]
    loops = sch.get_loops(acc)[-len(present):] if present else []
    found = dict(zip(present, loops))
    for name, lp in found.items():
        assert int(sch.get(lp).extent) == extents[name], (name, sch.get(lp).extent)
    return found


def schedule_conv(sch: s_tir.Schedule, spec: ConvSpec, knobs: Knobs) -> s_tir.Schedule:
    knobs = knobs.fit(spec)
    out = sch.get_sblock(OUT)
    n, y, x, co = sch.get_loops(out)
    xo, xi = sch.split(x, [None, knobs.tile_w])
    coo, coi = sch.split(co, [None, knobs.tile_co])
    sch.reorder(n, y, xo, coo, xi, coi)
    row = sch.fuse(n, y)
    sch.vectorize(coi)
    sch.unroll(xi)
    if knobs.parallel:
        sch.parallel(row)

    acc = sch.get_sblock(ACC)
    sch.compute_at(acc, coo)
    sch.set_scope(acc, 0, "local")
    loop = _tile_loops(sch, acc, spec, knobs)
    window = [loop[k] for k in ("kh", "kw", "cw") if k in loop]
    bits = [loop[k] for k in ("i", "j") if k in loop]
    order = window + bits if knobs.reduction_order == "window_first" else bits + window
    tile = [loop[k] for k in ("x", "co") if k in loop]
    if order:
        sch.reorder(*order, *tile)
    if "co" in loop:
        sch.vectorize(loop["co"])
    if "x" in loop:
        sch.unroll(loop["x"])
    if knobs.unroll_bits:
        for name in ("i", "j"):
            if name in loop:
                sch.unroll(loop[name])
    if order or tile:
        sch.decompose_reduction(acc, (order or tile)[0])

    # the window sum of a whole row is computed once, before the row's tiles
    wsum = sch.get_sblock(WINDOW_SUM)
    sch.compute_at(wsum, row)
    return sch
