"""The deployment commands end to end on a small network: compile, verify, run, bench,
export-onnx."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mpqc.cli import main


@pytest.fixture(scope="module")
def democnn_library(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    out = root / "democnn-a2w2.so"
    result = CliRunner().invoke(main, ["compile", "--model", "democnn", "--bits", "uniform:2,2",
                                       "--out", str(out), "--predicted-ms", "0.5"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "conv2" in result.output
    return out


def test_verify_json(democnn_library):
    result = CliRunner().invoke(main, ["verify", str(democnn_library), "--images", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["exact"] is True and report["first_mismatch"] is None
    assert report["max_abs_diff"] < 1e-4
    assert {c["name"] for c in report["layers"]} >= {"conv2", "conv5", "conv5.pool", "linear"}


def test_verify_names_the_first_layer_that_differs(democnn_library, monkeypatch):
    """A library whose conv3 integers are off is not exact, and says where."""
    from mpqc.build import verify
    from mpqc import runtime

    real_debug = runtime.Library.debug

    def corrupted(self, images):
        outs = real_debug(self, images)
        names = [v["producer"] for v in self.manifest["debug_values"]]
        outs[names.index("conv3")][0, 0, 0, 0] ^= 1
        return outs

    monkeypatch.setattr(runtime.Library, "debug", corrupted)
    check = verify.verify_library(democnn_library, count=1)
    assert not check.exact and check.first_mismatch == "conv3"


def test_run_prints_top_classes(democnn_library, tmp_path):
    from PIL import Image
    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    result = CliRunner().invoke(main, ["run", str(democnn_library), str(image), "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.output)[0]["top"]
    assert len(top) == 3 and top[0]["logit"] >= top[1]["logit"] >= top[2]["logit"]


def test_bench_library_json(democnn_library, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(democnn_library), "--threads", "1",
                                       "--repeats", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["mpqc_ms"] > 0 and report["predicted_ms"] == 0.5
    assert report["vs_predicted"] == pytest.approx(report["mpqc_ms"] / 0.5)


def test_export_onnx_runs_in_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from mpqc.build.network import NetworkSpec, build_quantized_model
    from mpqc.build.onnx_export import qdq_model

    out = tmp_path / "democnn.onnx"
    result = CliRunner().invoke(main, ["export-onnx", "--model", "democnn", "--bits",
                                       "uniform:2,2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == 6 and ops.count("DequantizeLinear") == 12
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 6  # the weight codes of every quantized layer
    model, shape = build_quantized_model(NetworkSpec(model="democnn", config="uniform:2,2"))
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = qdq_model(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-3, atol=1e-3)


def test_compile_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["compile", "--model", "democnn", "--bits",
                                       "uniform:9,2", "--out", str(tmp_path / "x.so")])
    assert result.exit_code == 2
    assert "outside 1..8" in result.output
    result = CliRunner().invoke(main, ["compile", "--model", "democnn", "--out",
                                       str(tmp_path / "x.so")])
    assert result.exit_code == 2 and "--bits" in result.output
