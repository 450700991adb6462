"""Models: the built-in networks (ResNet-20 for CIFAR-10, a demo CNN for MNIST), user
factories (`package.module:function`), checkpoint loading and the layer description
that the search and the compiler start from."""
from mpqc.models.democnn import DemoCNN, democnn
from mpqc.models.layers import LayerInfo, describe_layers, layers_from_json, layers_to_json
from mpqc.models.registry import BUILTIN_MODELS, ModelInfo, build_model
from mpqc.models.resnet_cifar import BasicBlock, PadShortcut, ResNetCifar, resnet20
from mpqc.models.weights import load_weights

__all__ = [
    "BUILTIN_MODELS", "ModelInfo", "build_model", "load_weights",
    "LayerInfo", "describe_layers", "layers_to_json", "layers_from_json",
    "ResNetCifar", "BasicBlock", "PadShortcut", "resnet20", "DemoCNN", "democnn",
]
