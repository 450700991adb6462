import json

import pytest

from mpqc.errors import ModelError
from mpqc.importer import import_model
from tests.conftest import shared_file


def test_import_democnn_writes_layers_json(tmp_path):
    result = import_model("democnn")
    path = tmp_path / "layers.json"
    result.write(path)
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["model"] == "democnn" and data["input_shape"] == [1, 28, 28]
    quantizable = [l for l in data["layers"] if l["quantizable"]]
    assert quantizable and all(l["in_channels"] % 8 == 0 for l in quantizable)
    assert data["layers"][0]["reason"] == "first layer stays 8-bit"


def test_import_resnet20_with_weights_records_hash():
    weights = shared_file("models", "resnet20-12fca82f.th")
    result = import_model("resnet20", weights=str(weights))
    assert len(result.weights_sha256) == 64
    assert sum(l.quantizable for l in result.layers) == 18


def test_model_without_quantizable_layer(tmp_path, monkeypatch):
    (tmp_path / "tiny_user_models.py").write_text(
        "import torch.nn as nn\n"
        "def single():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="no quantizable layer"):
        import_model("tiny_user_models:single", input_shape=(3, 32, 32))
    with pytest.raises(ModelError, match="--input-shape"):
        import_model("tiny_user_models:single")
