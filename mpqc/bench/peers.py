"""The engines a bit-serial kernel is compared with, timed at batch 1 in this process.

Each peer builds one convolution of a ConvShape with random weights and inputs, pins
its own thread count and returns a Timing (timing.py), so that ratios against the
project's kernels come from the same run on the same machine (perf.md).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from mpqc.bench.shapes import ConvShape
from mpqc.bench.timing import Timing, pinned_threads, time_callable, time_tvm
from mpqc.errors import BuildError, ConfigError

SEED = 0
CALIBRATION_INPUTS = 16


def _torch_conv(shape: ConvShape):
    import torch

    torch.manual_seed(SEED)
    conv = torch.nn.Conv2d(shape.cin, shape.cout, shape.kernel, shape.stride,
                           shape.padding, bias=False)  # ResNet convs carry no bias
    return conv.eval()


def _input(shape: ConvShape, seed: int = SEED) -> np.ndarray:
    """NCHW float32, the layout torch and ONNX Conv take."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, shape.cin, shape.h, shape.w), dtype=np.float32)


def torch_fp32(shape: ConvShape, threads: int = 1, repeats: int = 30,
               min_sample_ms: float = 20.0) -> Timing:
    """torch eager fp32 (oneDNN), channels_last as perf.md's peer figures."""
    import torch

    conv = _torch_conv(shape).to(memory_format=torch.channels_last)
    x = torch.from_numpy(_input(shape)).to(memory_format=torch.channels_last)
    with pinned_threads(threads), torch.no_grad():
        return time_callable(lambda: conv(x), repeats=repeats, min_sample_ms=min_sample_ms)


def _export_onnx(shape: ConvShape, path: Path) -> Path:
    """One Conv node, NCHW input named "x" (the exported graph takes what torch's
    Conv2d takes: a contiguous NCHW tensor; no layout transposes are added)."""
    import torch

    x = torch.from_numpy(_input(shape))
    with warnings.catch_warnings():  # the TorchScript exporter is chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_torch_conv(shape), (x,), str(path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False)
    return path


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time_ort(path: Path, shape: ConvShape, threads: int, repeats: int,
              min_sample_ms: float) -> Timing:
    sess = _ort_session(path, threads)  # the model is read now: the temp dir may go
    feed = {"x": _input(shape)}
    return time_callable(lambda: sess.run(None, feed), repeats=repeats,
                         min_sample_ms=min_sample_ms)


def ort_fp32(shape: ConvShape, threads: int = 1, repeats: int = 30,
             min_sample_ms: float = 20.0) -> Timing:
    with tempfile.TemporaryDirectory(prefix="mpqc-ort-") as tmp:
        path = _export_onnx(shape, Path(tmp) / "conv.onnx")
        return _time_ort(path, shape, threads, repeats, min_sample_ms)


class _RandomReader:
    """Calibration data for quantize_static: a few random NCHW inputs."""

    def __init__(self, shape: ConvShape, count: int = CALIBRATION_INPUTS):
        self._items = iter([{"x": _input(shape, seed=SEED + 1 + i)} for i in range(count)])

    def get_next(self):
        return next(self._items, None)


def quantize_int8(shape: ConvShape, fp32_path: Path, out_path: Path) -> Path:
    """Static QDQ int8 (per-channel s8 weights, u8 activations) as perf.md's peer."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(str(pre), str(out_path), _RandomReader(shape),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out_path


def ort_int8(shape: ConvShape, threads: int = 1, repeats: int = 30,
             min_sample_ms: float = 20.0) -> Timing:
    with tempfile.TemporaryDirectory(prefix="mpqc-ort-") as tmp:
        fp32 = _export_onnx(shape, Path(tmp) / "conv.onnx")
        int8 = quantize_int8(shape, fp32, Path(tmp) / "conv.int8.onnx")
        return _time_ort(int8, shape, threads, repeats, min_sample_ms)


def pack_word_dtype(cin: int) -> str:
    """Largest topi pack word dividing cin: topi's bitpack asserts a whole number."""
    for bits in (64, 32, 16, 8):
        if cin % bits == 0:
            return f"uint{bits}"
    raise ConfigError(f"topi bit-serial needs input channels divisible by 8, got {cin}")


def host_target():
    import tvm

    return tvm.target.Target({"kind": "llvm",
                              "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def topi_bitserial_module(shape: ConvShape, a: int, w: int, unipolar: bool = False):
    """TVM's own topi.nn.bitserial_conv2d_nhwc, untuned: the default schedule of
    te.create_prim_func, compiled for the host. Returns (executable, numpy args).

    Both operands are 4-D uint8 codes packed *inside* the function by topi's bitpack
    stages (so weight packing is timed too): the pre-packed 5-D kernel path reads
    num_filter from the bit axis (out channels come out = w). unipolar=False is the
    0/1 AND path (one popcount per word pair); topi's unipolar=True means +-1 weights
    and does two popcounts."""
    import tvm
    from tvm import te, topi

    data = te.placeholder((1, shape.h, shape.w, shape.cin), "uint8", name="data")
    kernel = te.placeholder((shape.kernel, shape.kernel, shape.cin, shape.cout), "uint8",
                            name="kernel")
    try:
        out = topi.nn.bitserial_conv2d_nhwc(
            data, kernel, shape.stride, shape.padding, a, w,
            pack_dtype=pack_word_dtype(shape.cin), out_dtype="int32", unipolar=unipolar)
        func = te.create_prim_func([data, kernel, out])
        exe = tvm.compile(tvm.IRModule({"main": func}), host_target())
    except (tvm.TVMError, AssertionError) as exc:
        raise BuildError(f"topi bitserial_conv2d_nhwc a{a}w{w} for {shape.name}: {exc}") from exc
    rng = np.random.default_rng(SEED)
    args = [rng.integers(0, 1 << a, (1, shape.h, shape.w, shape.cin), dtype=np.uint8),
            rng.integers(0, 1 << w, (shape.kernel, shape.kernel, shape.cin, shape.cout),
                         dtype=np.uint8),
            np.zeros((1, shape.out_h, shape.out_w, shape.cout), np.int32)]
    return exe, args


def tvm_topi_bitserial(shape: ConvShape, a: int, w: int, threads: int = 1,
                       repeats: int = 30, min_repeat_ms: float = 20.0,
                       unipolar: bool = False) -> Timing:
    """Untuned topi bit-serial conv. Its default schedule has no parallel loop, so it
    runs on one thread whatever `threads` says (pinned anyway, for uniformity)."""
    import tvm

    exe, args = topi_bitserial_module(shape, a, w, unipolar)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(x, dev) for x in args]
    with pinned_threads(threads):
        return time_tvm(exe, "main", dev, tensors, repeats=repeats,
                        min_repeat_ms=min_repeat_ms)
