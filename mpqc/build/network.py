"""What a library is built from, as data that rebuilds the same quantized model.

A NetworkSpec names the model (`resnet20`, `democnn`, `package.module:function`), its
float weights or a quantized checkpoint (mpqc.quant.model.save_quantized), the bit
configuration and the calibration images. The manifest stores it, so `mpqc verify` and
`mpqc bench` rebuild the reference model from the manifest alone.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mpqc.errors import ConfigError, ModelError

INIT_SEED = 0  # initialisation of a model built without weights
CALIBRATION_SEED = 1000  # random calibration images without data (not the test images' seed)
RANDOM_CALIBRATION = 16


@dataclass(frozen=True)
class NetworkSpec:
    model: str
    weights: str | None = None        # float state dict
    checkpoint: str | None = None     # quantized checkpoint (save_quantized)
    config: str | None = None         # "uniform:A,W" or a JSON file (ignored with checkpoint)
    data: str | None = None           # dataset spec: calibration images and normalisation
    calibration: int = 64             # images of the train split used to calibrate
    first_last_bits: int = 8
    input_shape: tuple[int, ...] = ()  # (C, H, W); default: the built-in model's
    num_classes: int | None = None
    files: dict = field(default_factory=dict)  # path -> sha256 (filled by describe())

    def to_json(self) -> dict:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out

    @staticmethod
    def from_json(row: dict) -> "NetworkSpec":
        row = dict(row)
        row["input_shape"] = tuple(row.get("input_shape") or ())
        try:
            return NetworkSpec(**row)
        except TypeError as exc:
            raise ConfigError(f"manifest network entry is malformed ({exc}); rebuild the "
                              "library with `mpqc compile`") from exc

    def describe(self) -> "NetworkSpec":
        """The same spec with the sha256 of every file it reads."""
        files = {}
        for path in (self.weights, self.checkpoint, self.config):
            if path and Path(path).is_file():
                files[str(path)] = sha256(path)
        return NetworkSpec(**{**asdict(self), "files": files})


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_input_shape(spec: NetworkSpec) -> tuple[int, int, int]:
    from mpqc.models import BUILTIN_MODELS
    if spec.input_shape:
        return tuple(spec.input_shape)
    if spec.model in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec.model].input_shape
    raise ConfigError(f"model {spec.model!r} is not built in: give its input shape (C,H,W)")


def normalisation(spec: NetworkSpec) -> dict:
    """mean/std the model's inputs are normalised with (from the data, else the model's)."""
    from mpqc.data.arrays import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD
    from mpqc.models import BUILTIN_MODELS
    if spec.data:
        from mpqc.data import load_dataset
        splits = load_dataset(spec.data, augment=False)
        return {"mean": list(splits.mean), "std": list(splits.std), "source": spec.data}
    default = BUILTIN_MODELS[spec.model].default_data if spec.model in BUILTIN_MODELS else None
    if default == "mnist":
        return {"mean": list(MNIST_MEAN), "std": list(MNIST_STD), "source": "mnist"}
    if default == "cifar10":
        return {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "source": "cifar10"}
    return {"mean": None, "std": None, "source": None}


def calibration_images(spec: NetworkSpec, count: int | None = None) -> np.ndarray:
    """The first `count` training images of the data, normalised; without data,
    standard-normal images (seeded: the same every time), like normalised inputs."""
    if not spec.data:
        rng = np.random.default_rng(CALIBRATION_SEED)
        n = min(count or spec.calibration, RANDOM_CALIBRATION)
        return rng.standard_normal((n, *default_input_shape(spec))).astype(np.float32)
    import torch
    from mpqc.data import load_dataset
    splits = load_dataset(spec.data, augment=False)
    n = min(count or spec.calibration, len(splits.train))
    return torch.stack([splits.train[i][0] for i in range(n)]).numpy()


def test_images(spec: NetworkSpec, count: int, seed: int = 0) -> np.ndarray:
    """`count` test images of the data, else standard-normal images of the input shape."""
    if spec.data:
        import torch
        from mpqc.data import load_dataset
        test = load_dataset(spec.data, augment=False).test
        return torch.stack([test[i][0] for i in range(min(count, len(test)))]).numpy()
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *default_input_shape(spec))).astype(np.float32)


def build_quantized_model(spec: NetworkSpec):
    """(quantized model in eval mode, input shape): the model the library computes."""
    from mpqc.models import build_model, load_weights
    shape = default_input_shape(spec)
    if spec.checkpoint:
        from mpqc.quant.model import load_quantized
        if not Path(spec.checkpoint).is_file():
            raise ModelError(f"quantized checkpoint {spec.checkpoint} not found")
        model, _meta = load_quantized(spec.checkpoint)
        return model.eval(), shape
    if not spec.config:
        raise ConfigError("give a bit configuration (--bits uniform:A,W or --config FILE) "
                          "or a quantized checkpoint")
    from mpqc.latency.network import parse_config
    from mpqc.models import describe_layers
    from mpqc.quant.model import quantize_model
    import torch
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)  # without weights: the same untrained model every time
        model = build_model(spec.model, num_classes=spec.num_classes)
    if spec.weights:
        load_weights(model, spec.weights)
    layers = describe_layers(model, shape, first_last_8bit=True)
    config = parse_config(spec.config, layers)
    calib_tensor = torch.from_numpy(calibration_images(spec))
    # calibration subsamples large activations at random: seed it, so that rebuilding
    # the reference gives the very steps the library was built with
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        model = quantize_model(model.eval(), config, calib=calib_tensor,
                               first_last_bits=spec.first_last_bits, input_shape=shape)
    return model.eval(), shape
