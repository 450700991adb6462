"""Quantization: integer codes (the one definition the kernels, the lowering and the
fake-quant PyTorch model share), fake-quant layers with learnable steps, and turning a
float model into a quantized one."""
from mpqc.quant.codes import act_codes, act_range, weight_codes
from mpqc.quant.layers import QuantConv2d, QuantLinear
from mpqc.quant.model import (load_quantized, quant_config, quantizable_layers, quantize_model,
                              save_quantized)

__all__ = ["act_codes", "act_range", "weight_codes", "QuantConv2d", "QuantLinear",
           "quantize_model", "quant_config", "quantizable_layers", "save_quantized",
           "load_quantized"]
