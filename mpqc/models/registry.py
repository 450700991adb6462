"""Model specs -> nn.Module: the built-in models by name, or a user's factory.

A spec is `resnet20`, `democnn` or `package.module:function`, where the function is
importable from sys.path and returns an nn.Module.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from mpqc.errors import ModelError, first_line
from mpqc.models.democnn import democnn
from mpqc.models.resnet_cifar import resnet20


@dataclass(frozen=True)
class ModelInfo:
    """A built-in model: how to make it and what data it expects."""

    factory: Callable[..., nn.Module]
    description: str
    default_data: str                    # dataset spec of mpqc.data: "mnist" / "cifar10"
    input_shape: tuple[int, int, int]    # (C, H, W) of one image
    num_classes: int


BUILTIN_MODELS: dict[str, ModelInfo] = {
    "resnet20": ModelInfo(
        resnet20, "ResNet-20 for CIFAR-10 (He et al. 2016, option-A shortcuts), 0.27M params",
        "cifar10", (3, 32, 32), 10),
    "democnn": ModelInfo(
        democnn, "small 5-conv CNN for MNIST (~3.9M MACs), the quick demo default",
        "mnist", (1, 28, 28), 10),
}

_SPEC_HELP = ("use one of " + ", ".join(BUILTIN_MODELS)
              + " or package.module:function (an importable factory returning an nn.Module)")


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """A fresh (untrained) model for `spec`; `num_classes` overrides the classifier width."""
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise ModelError(f"model {spec!r}: num_classes must be a positive integer, "
                         f"got {num_classes!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"model spec {spec!r} is empty or not a string: {_SPEC_HELP}")
    spec = spec.strip()
    if spec in BUILTIN_MODELS:
        info = BUILTIN_MODELS[spec]
        return info.factory(num_classes=num_classes or info.num_classes)
    if ":" in spec:
        return _build_user_model(spec, num_classes)
    raise ModelError(f"unknown model {spec!r}: {_SPEC_HELP}")


def _resolve_factory(spec: str) -> Callable[..., object]:
    module_name, _, attr_path = spec.partition(":")
    if not _is_dotted_name(module_name) or not _is_dotted_name(attr_path):
        raise ModelError(f"model spec {spec!r} is malformed: write package.module:function")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # a user's module can fail in any way while importing
        raise ModelError(f"model {spec!r}: cannot import module {module_name!r} "
                         f"({type(exc).__name__}: {first_line(exc)}); check that it is on "
                         f"sys.path (PYTHONPATH) and imports cleanly") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model {spec!r}: module {module_name!r} has no attribute "
                             f"{attr_path!r}; name a function defined in it")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model {spec!r}: {attr_path!r} is a {type(obj).__name__}, "
                         f"not a callable factory")
    return obj


def _build_user_model(spec: str, num_classes: int | None) -> nn.Module:
    factory = _resolve_factory(spec)
    pass_classes = num_classes is not None and _accepts_num_classes(factory)
    try:
        model = factory(num_classes=num_classes) if pass_classes else factory()
    except Exception as exc:
        raise ModelError(f"model {spec!r}: the factory raised {type(exc).__name__}: "
                         f"{first_line(exc)}; it must be callable with no arguments "
                         f"(or with num_classes=...)") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec!r}: the factory returned a {type(model).__name__}, "
                         f"not a torch.nn.Module")
    if num_classes is not None and not pass_classes:
        _check_classifier_width(spec, model, num_classes)
    return model


def _check_classifier_width(spec: str, model: nn.Module, num_classes: int) -> None:
    """A factory without num_classes must already match the data (no silent mismatch)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features != num_classes:
        raise ModelError(f"model {spec!r}: its last linear layer has "
                         f"{linears[-1].out_features} outputs but {num_classes} classes "
                         f"are needed; give the factory a num_classes parameter")


def _accepts_num_classes(factory: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any((p.name == "num_classes" and p.kind != p.POSITIONAL_ONLY)
               or p.kind == p.VAR_KEYWORD for p in params)


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))

