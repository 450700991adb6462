"""Whole-network peers of a compiled library, timed at batch 1 in the same process:
the fp32 model in torch eager, onnxruntime fp32, and onnxruntime int8 (static QDQ
quantization of the same fp32 model, per-channel s8 weights, u8 activations, calibrated
on the given images). Same timer and thread pinning as the kernel peers (mpqc.bench).
"""
from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mpqc.bench.peers import _ort_session
from mpqc.bench.timing import Timing, pinned_threads, time_callable


def export_fp32_onnx(model, input_shape, path: Path) -> Path:
    import torch

    x = torch.zeros((1, *input_shape))
    with warnings.catch_warnings():  # the TorchScript exporter is chosen on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["x"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    return path


class _Calibration:
    def __init__(self, images: np.ndarray):
        self._items = iter([{"x": img[None].astype(np.float32)} for img in images])

    def get_next(self):
        return next(self._items, None)


def quantize_int8_onnx(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def fp32_network(spec):
    """What the peers run for a library's NetworkSpec: (fp32 model, input shape, one test
    image, calibration images). From a quantized checkpoint alone the same architecture
    untrained: latency does not depend on the weight values."""
    from mpqc.build.network import calibration_images, default_input_shape, test_images
    from mpqc.models import build_model, load_weights
    model = build_model(spec.model, num_classes=spec.num_classes)
    if spec.weights:
        load_weights(model, spec.weights)
    return model, default_input_shape(spec), test_images(spec, 1)[0], calibration_images(spec)


@contextmanager
def onnx_peers(model, input_shape, calibration: np.ndarray):
    """(fp32 .onnx, static int8 QDQ .onnx) of `model` in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="mpqc-peers-") as tmp:
        fp32 = export_fp32_onnx(model, input_shape, Path(tmp) / "model.onnx")
        yield fp32, quantize_int8_onnx(fp32, Path(tmp) / "model.int8.onnx", calibration)


@contextmanager
def ort_int8_runner(model, input_shape, image: np.ndarray, calibration: np.ndarray,
                    threads: int):
    """A callable that runs onnxruntime int8 (the static QDQ peer) once on `image`: for
    timing it in rounds alternating with a library."""
    with onnx_peers(model, input_shape, calibration) as (_, int8):
        sess = _ort_session(int8, threads)
        feed = {"x": image[None].astype(np.float32)}
        yield lambda: sess.run(None, feed)


def time_peers(model, input_shape, image: np.ndarray, calibration: np.ndarray,
               threads: int, repeats: int = 30) -> dict[str, Timing]:
    """{"torch_fp32", "ort_fp32", "ort_int8"}: Timing of one image (batch 1)."""
    import torch

    x = torch.from_numpy(image[None].astype(np.float32))
    model = model.eval()
    out = {}
    with pinned_threads(threads), torch.no_grad():
        out["torch_fp32"] = time_callable(lambda: model(x), repeats=repeats)
    feed = {"x": image[None].astype(np.float32)}
    with onnx_peers(model, input_shape, calibration) as (fp32, int8):
        for name, path in (("ort_fp32", fp32), ("ort_int8", int8)):
            sess = _ort_session(path, threads)
            out[name] = time_callable(lambda: sess.run(None, feed), repeats=repeats)
    return out
