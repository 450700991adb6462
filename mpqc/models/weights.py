"""Loading fp32 checkpoints into a model, strictly, with errors that name the keys."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mpqc.errors import ModelError, first_line

_CONTAINER_KEYS = ("state_dict", "model")  # {"state_dict": ...} (akamaster), {"model": ...}
_DATAPARALLEL_PREFIX = "module."
_SHOW = 3  # offending keys shown in a message


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the state_dict saved at `path` into `model` (strict: every key, every shape)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found: pass the path of a torch.save'd "
                         f"state_dict (.pt/.pth/.th)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, random bytes, pickled code: all unreadable
        raise ModelError(f"weights file {path} cannot be read as a PyTorch checkpoint: "
                         f"{_unreadable_reason(exc)}; save one with "
                         f"torch.save(model.state_dict(), path)") from exc
    state = _strip_prefix(_find_state_dict(obj, path))
    _check_compatible(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # anything the pre-check did not foresee (dtype, custom hooks)
        raise ModelError(f"weights file {path} does not load into "
                         f"{type(model).__name__}: {first_line(exc)}") from exc


def _unreadable_reason(exc: Exception) -> str:
    """The useful part of torch.load's error (its weights_only advice is not: it runs code)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        found = re.search(r"GLOBAL (\S+) was not an allowed global", detail)
        if found:
            return f"it pickles {found.group(1)} (code), not only tensors"
        return f"not a tensor pickle ({' '.join(detail.split())})"
    sentence = " ".join(text.split()).split(". ")[0]
    return f"{type(exc).__name__}: {sentence or 'empty or truncated file'}"


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (not isinstance(obj, Mapping) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in obj.items())):
        raise ModelError(f"weights file {path} holds no state_dict (a dict of tensors, "
                         f"bare or under 'state_dict' / 'model'): got {type(obj).__name__}")
    return dict(obj)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from nn.DataParallel prefix every key with 'module.'."""
    if all(k.startswith(_DATAPARALLEL_PREFIX) for k in state):
        return {k[len(_DATAPARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def _check_compatible(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    # Old checkpoints lack BatchNorm's num_batches_tracked; BatchNorm fills it in itself.
    missing = [k for k in expected
               if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_few(mismatched)})")
    if problems:
        raise ModelError(f"weights file {path} does not match {type(model).__name__}: "
                         + "; ".join(problems) + "; check the model spec and num_classes")


def _few(items: list[str]) -> str:
    more = f", ... +{len(items) - _SHOW}" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more

