"""ARM64 kernels compile on the x86 host (no device needed) to NEON popcount code.

Their results are checked on an emulated ARM64 device by tests/test_arm64_device.py.
"""
import pytest

from mpqc.schedules import ConvSpec, Epilogue
from mpqc.schedules.build import build_conv, default_knobs
from mpqc.targets import load_target


@pytest.mark.parametrize("name", ["arm64-neon", "arm64-cortex-a72", "arm64-cortex-a76"])
def test_arm_kernels_lower_to_neon_cnt(name):
    target = load_target(name)
    assert default_knobs(target).tile_co == 8
    spec = ConvSpec(1, 8, 8, 64, 16, 3, 1, 1, 2, 2, epilogue=Epilogue("codes", out_bits=2))
    asm = build_conv(spec, target).mod.inspect_source("asm")
    assert "cnt\tv" in asm and "uaddlp" in asm  # vector popcount on 16 bytes
    assert "vpshufb" not in asm


def test_avx512_kernels_use_vpopcntq():
    spec = ConvSpec(1, 8, 8, 64, 16, 3, 1, 1, 1, 1)
    asm = build_conv(spec, load_target("x86-avx512")).mod.inspect_source("asm")
    assert "vpopcntq" in asm
