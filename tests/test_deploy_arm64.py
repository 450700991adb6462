"""A cross-compiled ResNet-20 mixed-precision library loads and verifies exactly on the
emulated ARM64 board (qemu-user, over TVM RPC). Slow; the board comes from
`make arm64-device`."""
import os
import subprocess
from pathlib import Path

import pytest

from mpqc.build.compile import compile_library
from mpqc.build.network import NetworkSpec
from mpqc.build.verify import verify_library
from mpqc.remote import RpcDevice
from mpqc.targets import load_target

from test_arm64_device import BOARD, REPO, free_port
from test_build import RESNET20_MIXED, RESNET20_WEIGHTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def board():
    if not (BOARD / "python").exists():
        pytest.skip(f"no emulated ARM64 board in {BOARD}: run `make arm64-device`")
    port = free_port()
    device = [str(REPO / "tools" / "arm64" / "device.sh")]
    subprocess.run(["bash", *device, "start", "--port", str(port), "--key", "arm64-deploy"],
                   check=True, timeout=180)
    yield RpcDevice("127.0.0.1", port, "arm64-deploy")
    subprocess.run(["bash", *device, "stop", "--port", str(port)], check=False, timeout=60)


def test_resnet20_mixed_library_is_exact_on_the_emulated_board(board, tmp_path):
    import json
    config = tmp_path / "mixed.json"
    config.write_text(json.dumps(RESNET20_MIXED))
    weights = str(RESNET20_WEIGHTS) if RESNET20_WEIGHTS.exists() else None
    spec = NetworkSpec(model="resnet20", weights=weights, config=str(config))
    result = compile_library(spec, load_target("arm64-cortex-a72"), tmp_path / "r20-arm.so")
    assert result.manifest["target"]["arch"] == "aarch64"
    check = verify_library(result.library, count=2, device=board)
    assert check.exact, check.first_mismatch
    assert check.device.startswith("key 'arm64-deploy'")
    assert check.max_abs_diff < 1e-3
