"""Measuring side of the kernel benchmarks: timing, a measured popcount roofline,
named conv shapes and the peer engines (torch, onnxruntime fp32/int8, TVM topi).

Library functions return dataclasses; printing tables is the caller's business.
"""
from mpqc.bench.roofline import Roofline, measure_roofline, popcount_and_total, roofline_ms
from mpqc.bench.shapes import SHAPES, ConvShape, get_shape
from mpqc.bench.timing import Timing, pinned_threads, set_threads, time_callable, time_tvm

__all__ = ["Timing", "time_callable", "time_tvm", "set_threads", "pinned_threads",
           "Roofline", "measure_roofline", "popcount_and_total", "roofline_ms",
           "ConvShape", "SHAPES", "get_shape"]
