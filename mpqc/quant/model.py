"""A float model -> its fake-quant twin, and quantized checkpoints.

`quantize_model` replaces each quantizable Conv2d/Linear in place (same qualified names)
by a QuantConv2d/QuantLinear with its (a, w). The first conv and the last linear stay at
`first_last_bits` (the first with a signed input: it reads the normalised image);
layers the bit-serial kernels cannot run stay float and are listed by
`quantizable_layers` with the reason.

Shared inputs. The deployed library passes integer codes between layers, so where a
tensor feeds a quantized layer and something else (a ResNet block input feeds conv1 and
the shortcut), the something else sees codes too. Those are the residual stream's own
codes: `residual_bits` (8 by default) with a step of their own, held by the shortcut
module as `residual_step`; the quantized layer requantizes them to its own bits. A
shortcut at the convolution's 1-2 bits instead throws away most of what the block adds:
ResNet-20 at a2w1 collapsed to chance where the 8-bit residual stream trains to ~70% in
the same 200 steps (docs/BENCHMARKS.md). With `residual_bits=None` the shortcut sees the
codes of the layer reading the same tensor. Forward pre-hooks do both; without them,
fine-tuning would optimise a model that the library does not compute.
"""
from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mpqc.errors import ConfigError, ModelError, first_line
from mpqc.quant.codes import act_range
from mpqc.quant.layers import QuantConv2d, QuantLinear, fake_quant_act, init_act_step
from mpqc.schedules.spec import check_bits, check_config

FORMAT = "mpqc-quantized/2"
RESIDUAL_BITS = 8


def _layers(model: nn.Module, input_shape):
    from mpqc.models import describe_layers
    return describe_layers(model, tuple(input_shape), first_last_8bit=True)


def quantizable_layers(model: nn.Module, input_shape=None) -> list[tuple[str, str | None]]:
    """(name, None) for each searchable layer, (name, reason) for the others.
    `input_shape` (C, H, W) may be left out for a model made by quantize_model."""
    input_shape = input_shape or getattr(model, "mpqc_input_shape", None)
    if input_shape is None:
        raise ConfigError("quantizable_layers needs the input shape (C, H, W) of the model")
    return [(layer.name, None if layer.quantizable else layer.reason)
            for layer in _layers(model, input_shape)]


class SharedInputQuant:
    """Forward pre-hook: a module reading a quantized layer's input sees its codes."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, module, args):
        return (self.layer.quantized_input(args[0]), *args[1:])


class ResidualQuant:
    """Forward pre-hook: the residual stream's codes, with the quantizer `owner` holds."""

    def __init__(self, owner: nn.Module):
        self.owner = owner

    def __call__(self, module, args):
        owner = self.owner
        return (fake_quant_act(args[0], owner.residual_step, owner.residual_bits), *args[1:])


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _capture_inputs(model: nn.Module, names: list[str], batch: torch.Tensor) -> dict:
    """The input tensor of each named module on one forward pass (eval, no grad)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen.setdefault(n, args[0])) for n in names]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def _capture_inputs_in_eval(model: nn.Module, names: list[str], batch: torch.Tensor) -> dict:
    """_capture_inputs in eval mode, the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return _capture_inputs(model, names, batch)
    finally:
        model.train(was_training)


def install_shared_input_hooks(model: nn.Module, input_shape,
                               residual_bits: int | None = RESIDUAL_BITS,
                               calib: torch.Tensor | None = None) -> None:
    """Every module reading the input of a layer with `quantized_input` (fake-quant or
    supernet layers) gets codes: the residual stream's own (`residual_bits`, a step
    `residual_step` registered on that module, calibrated on `calib` when given), which
    the layer then requantizes; or, with residual_bits None, the layer's own codes."""
    if residual_bits is not None:
        act_range(residual_bits)            # validates
    quant = {n: m for n, m in model.named_modules() if hasattr(m, "quantized_input")}
    leaves = [n for n, m in model.named_modules() if n and not any(m.children())]
    example = torch.zeros((1, *input_shape), dtype=next(model.parameters()).dtype)
    inputs = _capture_inputs_in_eval(model, leaves, example)
    by_tensor = {id(inputs[n]): n for n in quant if n in inputs}
    shared = [(name, by_tensor[id(inputs[name])]) for name in leaves
              if name not in quant and name in inputs and id(inputs[name]) in by_tensor]
    if residual_bits is None:
        for name, reader in shared:
            model.get_submodule(name).register_forward_pre_hook(SharedInputQuant(quant[reader]))
        return
    seen = ({} if calib is None
            else _capture_inputs_in_eval(model, [name for name, _ in shared], calib))
    owners: dict[str, nn.Module] = {}
    for name, reader in shared:
        module = model.get_submodule(name)
        if reader not in owners:   # one quantizer per tensor, however many read it
            step = init_act_step(seen.get(name), residual_bits, False)
            module.register_parameter("residual_step", nn.Parameter(torch.tensor(step)))
            module.residual_bits = int(residual_bits)
            owners[reader] = module
            quant[reader].register_forward_pre_hook(ResidualQuant(module))
        module.register_forward_pre_hook(ResidualQuant(owners[reader]))


def quantize_model(model: nn.Module, config: Mapping[str, tuple[int, int]] | tuple[int, int],
                   calib: torch.Tensor | None = None, first_last_bits: int = 8,
                   input_shape=None, residual_bits: int | None = RESIDUAL_BITS) -> nn.Module:
    """A fake-quant copy of `model` (the original is left as it is).

    `config`: {layer name: (a, w)} for the searchable layers, or one (a, w) for all.
    `calib`: a batch of inputs to initialise the activation steps (and give the input
    shape); without it the steps start at a fixed range and `input_shape` (C, H, W) is
    needed, unless a calibration batch gives it. `residual_bits`: the precision of the
    codes a shortcut carries (see the module docstring).
    """
    check_bits(first_last_bits, first_last_bits, "first/last layers")
    if input_shape is None:
        if calib is None:
            raise ConfigError("quantize_model needs a calibration batch or the input shape")
        input_shape = tuple(calib.shape[1:])
    layers = _layers(model, input_shape)
    searchable = [layer.name for layer in layers if layer.quantizable]
    if not searchable:
        raise ModelError(f"model {type(model).__name__} has no quantizable layer besides the "
                         "8-bit first and last ones")
    pairs = check_config(config if isinstance(config, Mapping)
                         else {n: tuple(config) for n in searchable}, searchable)

    first, last = layers[0].name, layers[-1].name
    plan: dict[str, tuple[int, int, bool]] = {n: (a, w, False) for n, (a, w) in pairs.items()}
    for layer in (layers[0], layers[-1]):
        if layer.reason in ("first layer stays 8-bit", "last layer stays 8-bit"):
            plan[layer.name] = (first_last_bits, first_last_bits, layer.name == first
                                and layer.kind == "conv2d")
    float_model = model
    model = copy.deepcopy(model)
    seen = (_capture_inputs(float_model.eval(), list(plan), calib) if calib is not None else {})
    for name, (a, w, signed) in plan.items():
        module = model.get_submodule(name)
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        q = cls.from_float(module, a, w, a_signed=signed)
        q.fixed_bits = name in (first, last) and name not in pairs
        if name in seen:
            with torch.no_grad():
                q.a_step.fill_(init_act_step(seen[name], a, signed))
        _set_module(model, name, q)
    install_shared_input_hooks(model, input_shape, residual_bits, calib)
    model.mpqc_input_shape = tuple(input_shape)
    model.mpqc_residual_bits = residual_bits
    return model


def quant_config(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (a, w)} of the searchable quantized layers (not the fixed first/last)."""
    return {n: (m.a_bits, m.w_bits) for n, m in model.named_modules()
            if isinstance(m, (QuantConv2d, QuantLinear)) and not getattr(m, "fixed_bits", False)}


def save_quantized(model: nn.Module, path: str | Path, meta: dict) -> Path:
    """A checkpoint that rebuilds the quantized model: meta needs "model" (its spec,
    e.g. "resnet20"); the configuration and input shape are taken from the model."""
    if "model" not in meta:
        raise ConfigError("save_quantized: meta must name the model spec ('model')")
    first_last = [m.a_bits for m in model.modules() if getattr(m, "fixed_bits", False)]
    payload = {"format": FORMAT, "meta": dict(meta),
               "config": {n: list(p) for n, p in quant_config(model).items()},
               "first_last_bits": first_last[0] if first_last else 8,
               "residual_bits": getattr(model, "mpqc_residual_bits", RESIDUAL_BITS),
               "input_shape": list(getattr(model, "mpqc_input_shape", meta.get("input_shape", []))),
               "state_dict": model.state_dict()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_quantized(path: str | Path) -> tuple[nn.Module, dict]:
    from mpqc.models import build_model
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"quantized checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"quantized checkpoint {path} is corrupt or not a torch file "
                         f"({type(exc).__name__}: {first_line(exc)})") from exc
    if isinstance(payload, dict) and payload.get("format") == "mpqc-quantized/1":
        raise ModelError(f"{path} is an mpqc-quantized/1 checkpoint, from before shortcuts "
                         "carried their own codes; fine-tune again to make a "
                         f"{FORMAT} one (mpqc pipeline reruns its finetune step)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not an mpqc quantized checkpoint ({FORMAT})")
    meta = payload["meta"]
    model = build_model(meta["model"], num_classes=meta.get("num_classes"))
    config = {n: tuple(p) for n, p in payload["config"].items()}
    q = quantize_model(model.eval(), config, first_last_bits=payload["first_last_bits"],
                       input_shape=tuple(payload["input_shape"]),
                       residual_bits=payload["residual_bits"])
    try:
        q.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"quantized checkpoint {path} does not match model "
                         f"{meta['model']}: {first_line(exc)}") from exc
    return q, meta


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
