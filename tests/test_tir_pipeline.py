"""mpqc's TIR pipeline: small kernel buffers on the stack, not in TVM's workspace pool."""
import numpy as np
import tvm

from mpqc.schedules.build import compile_prim_func
from mpqc.schedules.direct import DirectConv, direct_conv_prim_func, direct_conv_reference
from mpqc.targets import load_target, tvm_target

HOST = load_target("host")
CONV = DirectConv(1, 16, 16, 3, 16, 3, 1, 1, "int8", shift=20, out_bits=4)


def _llvm_ir(lib) -> str:
    modules = [lib.mod, *lib.mod.imports]
    return "\n".join(m.inspect_source("ll") for m in modules if m.kind == "llvm")


def test_small_buffers_leave_the_workspace_pool():
    func = direct_conv_prim_func(CONV, 16)
    default = tvm.compile(tvm.IRModule({"main": func}), tvm_target(HOST))
    ours = compile_prim_func(func, HOST, "direct conv")
    # the pad buffer and the accumulator tile (inside the parallel loop) were workspace
    # allocations; the check fails if TVM's default ever stops making them
    assert "TVMBackendAllocWorkspace" in _llvm_ir(default)
    assert "TVMBackendAllocWorkspace" not in _llvm_ir(ours)


def test_stack_buffers_compute_the_same():
    rng = np.random.default_rng(3)
    codes = rng.integers(-128, 128, (1, 16, 16, 3)).astype(np.int8)
    weights = rng.integers(-128, 128, (3, 3, 3, 16)).astype(np.float32)
    mul = rng.integers(1, 40, 16).astype(np.int64)
    add = np.full(16, 8 << 20, np.int64)
    expected = direct_conv_reference(codes, weights, mul, add, CONV)
    assert len(np.unique(expected)) > 1
    lib = compile_prim_func(direct_conv_prim_func(CONV, 16), HOST, "direct conv")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev)
            for a in (codes, weights, mul, add, np.zeros(expected.shape, np.uint8))]
    lib["main"](*args)
    np.testing.assert_array_equal(args[-1].numpy(), expected)
