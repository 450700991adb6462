"""Bit-serial (bit-plane, popcount) operators: computes, schedules, numpy references.

Installed as `mpqc.schedules`. The schedule family of a target comes from its data
(`Target.schedule`); both families share one schedule (tiling.py) and differ in knobs.
This package never imports torch, and importing it does not import tvm either (only
compute, tiling and build do), so torch-side code can share spec.py's integer contract.
"""
from mpqc.schedules import arm, x86
from mpqc.schedules.spec import (BIT_RANGE, ConvSpec, Epilogue, check_bits, dense_spec,
                                 pack_word_for, weight_code_range, weight_offset)
from mpqc.schedules.knobs import Knobs

# Bumped whenever a compute or schedule change alters kernel speed: latency records
# measured under another version are stale (not skipped by `measure`, not fitted).
SCHEDULE_VERSION = 11  # 11: small kernel buffers on the stack (tir_pipeline.py)

# schedule family name (targets/*.json "schedule") -> default knobs for a SIMD width
FAMILIES = {"x86": x86.default_knobs, "arm": arm.default_knobs}
# schedule family -> activation packing (schedules.build.bitpack_prim_func)
PACK_STYLES = {"x86": "movemask", "arm": "multiply"}

__all__ = ["SCHEDULE_VERSION", "BIT_RANGE", "ConvSpec", "Epilogue", "Knobs", "FAMILIES",
           "PACK_STYLES", "check_bits",
           "dense_spec", "pack_word_for", "weight_code_range", "weight_offset"]
