"""Turn any nn.Module into an EBS supernet (layers found by a forward pass, replaced in
place under the same names)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mpqc.errors import ConfigError, ModelError
from mpqc.quant.layers import QuantConv2d, QuantLinear, init_act_step
from mpqc.quant.model import _capture_inputs, _set_module, install_shared_input_hooks
from mpqc.schedules.spec import check_bits
from mpqc.supernet.mixed import MixedConv2d, MixedLinear


@dataclass(frozen=True)
class SupernetReport:
    searchable: tuple[str, ...]
    fixed: tuple[tuple[str, str], ...]     # (name, why it stays at fixed bits / float)


def make_supernet(model: nn.Module, weight_bits, act_bits, input_shape=None,
                  calib: torch.Tensor | None = None, first_last_bits: int = 8,
                  clip_k: float | None = None) -> tuple[nn.Module, SupernetReport]:
    """(supernet, report). The first conv and last linear become 8-bit QuantConv2d /
    QuantLinear; layers the kernels cannot run stay float and are reported.
    `input_shape` (C, H, W) defaults to that of the calibration batch."""
    from mpqc.models import describe_layers
    if input_shape is None:
        if calib is None:
            raise ConfigError("make_supernet needs the input shape or a calibration batch")
        input_shape = tuple(calib.shape[1:])
    check_bits(first_last_bits, first_last_bits, "first/last layers")
    layers = describe_layers(model, tuple(input_shape), first_last_8bit=True)
    searchable = [l.name for l in layers if l.quantizable]
    if not searchable:
        raise ModelError(f"model {type(model).__name__} has no layer to search: every "
                         "conv/linear is the first, the last or unsupported by the kernels")
    first, last = layers[0].name, layers[-1].name
    net = copy.deepcopy(model)
    seen = _capture_inputs(model.eval(), [l.name for l in layers], calib) if calib is not None else {}
    fixed = []
    for layer in layers:
        module = net.get_submodule(layer.name)
        if layer.quantizable:
            cls = MixedConv2d if isinstance(module, nn.Conv2d) else MixedLinear
            new = cls.from_float(module, weight_bits, act_bits, clip_k)
            if layer.name in seen:
                new.calibrate(seen[layer.name])
        elif layer.name in (first, last) and layer.reason.endswith("stays 8-bit"):
            cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
            new = cls.from_float(module, first_last_bits, first_last_bits,
                                 a_signed=layer.name == first and layer.kind == "conv2d")
            new.fixed_bits = True
            if layer.name in seen:
                with torch.no_grad():
                    new.a_step.fill_(init_act_step(seen[layer.name], first_last_bits, new.a_signed))
            fixed.append((layer.name, layer.reason))
            _set_module(net, layer.name, new)
            continue
        else:
            fixed.append((layer.name, f"stays float: {layer.reason}"))
            continue
        _set_module(net, layer.name, new)
    install_shared_input_hooks(net, input_shape, calib=calib)
    net.mpqc_input_shape = tuple(input_shape)
    return net, SupernetReport(tuple(searchable), tuple(fixed))
