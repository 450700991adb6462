"""The TIR pipeline mpqc compiles with: TVM's default plus stack allocation of small
buffers.

TVM 0.27's host lowering (LowerTVMBuiltin) turns every buffer a kernel allocates,
local accumulator tiles included, into a TVMBackendAllocWorkspace/FreeWorkspace pair,
and a tile allocated inside a parallel loop pays the pair on every iteration: a 1-bit
ResNet-20 made ~370 such calls per inference. Buffers of a constant size up to
STACK_LIMIT bytes are marked `disable_lower_builtin`, which LowerTVMBuiltin honours by
leaving them to LLVM as stack allocations. Kernels timed alone and kernels in a network
library are compiled by this same pipeline, so the latency model measures what runs.
"""
from __future__ import annotations

from functools import lru_cache

import tvm
from tvm import tirx

NAME = "mpqc"
STACK_LIMIT = 64 * 1024   # bytes; TVM's worker threads have the default 8 MiB stack
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"


def _constant_bytes(buffer) -> int | None:
    dtype = tvm.DataType(str(buffer.dtype))
    total = dtype.bits * dtype.lanes // 8
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        total *= int(extent)
    return total


def _mark(stmt, limit: int):
    """`stmt` with its small allocations marked; the nodes on the way rebuilt (TVM 0.27
    has no Python statement mutator). Kinds not listed here are kept as they are."""
    if isinstance(stmt, tirx.AllocBuffer):
        size = _constant_bytes(stmt.buffer)
        if size is None or size > limit or DISABLE_LOWER_BUILTIN in stmt.annotations:
            return stmt
        marked = {**stmt.annotations, DISABLE_LOWER_BUILTIN: tirx.IntImm("bool", 1)}
        return tirx.AllocBuffer(stmt.buffer, marked, stmt.span)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_mark(s, limit) for s in stmt.seq], stmt.span)
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind,
                        _mark(stmt.body, limit), stmt.thread_binding, stmt.annotations,
                        stmt.step, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _mark(stmt.body, limit),
                             stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        other = None if stmt.else_case is None else _mark(stmt.else_case, limit)
        return tirx.IfThenElse(stmt.condition, _mark(stmt.then_case, limit), other, stmt.span)
    if isinstance(stmt, tirx.While):
        return tirx.While(stmt.condition, _mark(stmt.body, limit), stmt.span)
    return stmt


def stack_small_buffers(limit: int = STACK_LIMIT):
    """Mark constant-size allocations of at most `limit` bytes for the stack."""

    def transform(func, _mod, _ctx):
        return func.with_body(_mark(func.body, limit))

    return tirx.transform.prim_func_pass(transform, opt_level=0, name="mpqc.StackSmallBuffers")


def _factory():
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    pipeline, finalize_host, finalize_device = default_s_tir_pipeline()
    return (tvm.transform.Sequential([pipeline, stack_small_buffers()]), finalize_host,
            finalize_device)


@lru_cache(maxsize=1)
def tir_pipeline() -> str:
    """The registered name of the pipeline (registered on first use)."""
    from tvm.tirx.compilation_pipeline import register_tir_pipeline
    register_tir_pipeline(NAME, _factory)
    return NAME
