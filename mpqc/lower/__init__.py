"""Lowering: a quantized PyTorch model -> integer Program -> Relax IRModule.

`lower(model, input_shape, target)` traces the model (trace.py), fixes every integer
constant in a Program (program.py) and emits the Relax module (relax_emit.py). The same
Program runs as the integer reference (reference.py), which is what the compiled
library must equal.
"""
from __future__ import annotations

from dataclasses import dataclass

from mpqc.lower.program import LayerBits, Op, Program, Value
from mpqc.lower.reference import reference_logits, run_reference
from mpqc.lower.trace import is_quant_layer, lower_to_program


@dataclass
class Lowered:
    program: Program
    module: object          # tvm.IRModule
    target: object          # mpqc.targets.Target
    variants: dict          # layer name -> (ConvSpec with its pack word, Knobs)


def kernel_variants(target, tuning_log=None):
    """spec -> (spec with the pack word, knobs): the tuning log's best, else defaults."""
    from mpqc.schedules.build import default_knobs
    from mpqc.schedules.spec import Epilogue
    from mpqc.tuning import best_variant

    defaults = default_knobs(target)

    def choose(spec):
        best = None
        if tuning_log:
            # `mpqc tune` measures the plain requantizing kernel; its knobs serve the
            # same layer with a residual or a raw int32 output too
            plain = spec.with_(epilogue=Epilogue("codes", out_bits=spec.a_bits))
            best = best_variant(tuning_log, spec, target) or \
                best_variant(tuning_log, plain, target)
        return (best[0].with_(epilogue=spec.epilogue), best[1]) if best else (spec, defaults)
    return choose


def lower(model, input_shape, target, batch: int = 1, tuning_log=None) -> Lowered:
    """The Relax module of a quantized model for a target (NHWC, bit-serial kernels)."""
    from mpqc.lower.relax_emit import Emitter

    program = lower_to_program(model, input_shape, target, batch=batch)
    from mpqc.schedules.build import pack_style
    emitter = Emitter(program, kernel_variants(target, tuning_log),
                      float_lanes=max(target.simd_bits // 32, 1), pack_style=pack_style(target))
    return Lowered(program, emitter.module(), target, emitter.variants)


__all__ = ["Lowered", "LayerBits", "Op", "Program", "Value", "is_quant_layer", "lower",
           "lower_to_program", "kernel_variants", "run_reference", "reference_logits"]
