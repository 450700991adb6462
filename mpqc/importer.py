"""The `import` step: a PyTorch model (and its weights) -> its quantizable layers.

Writes layers.json: the model spec, the weights file and its sha256, the input shape
and one entry per Conv2d/Linear (shape, MACs, whether the bit-serial kernels can run
it, and if not why). Later steps (measure, search, lower) start from this file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mpqc.errors import ModelError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ImportedModel:
    model_spec: str
    weights: str | None
    weights_sha256: str | None
    input_shape: tuple[int, int, int]
    layers: tuple  # of mpqc.models.LayerInfo

    def to_json(self) -> dict:
        from mpqc.models import layers_to_json
        return {"schema": SCHEMA_VERSION, "model": self.model_spec, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "input_shape": list(self.input_shape),
                "layers": layers_to_json(list(self.layers))}

    def write(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)  # a killed run never leaves half a file


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_model(model_spec: str, weights: str | None = None,
                 input_shape: tuple[int, int, int] | None = None) -> ImportedModel:
    from mpqc.models import BUILTIN_MODELS, build_model, describe_layers, load_weights

    model = build_model(model_spec)
    if weights:
        load_weights(model, weights)
    if input_shape is None:
        info = BUILTIN_MODELS.get(model_spec)
        if info is None:
            raise ModelError(f"model {model_spec}: give its input shape (--input-shape C,H,W)")
        input_shape = info.input_shape
    layers = describe_layers(model.eval(), input_shape)
    if not any(layer.quantizable for layer in layers):
        raise ModelError(f"model {model_spec} has no quantizable layer (Conv2d/Linear that the "
                         "bit-serial kernels can run, other than the 8-bit first and last)")
    return ImportedModel(model_spec=model_spec, weights=str(weights) if weights else None,
                         weights_sha256=file_sha256(weights) if weights else None,
                         input_shape=tuple(input_shape), layers=tuple(layers))
