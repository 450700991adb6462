"""ARM64 kernels, cross-compiled on the host, exact on the emulated ARM64 board.

Slow (qemu-user); run with `make test-arm64`, which sets the board up first.
"""
import os
import socket
import subprocess
from pathlib import Path

import pytest

from mpqc.kernel_check import check_conv, conv_spec_for
from mpqc.remote import RpcDevice
from mpqc.targets import load_target

REPO = Path(__file__).resolve().parents[1]
BOARD = Path(os.environ.get("MPQC_CACHE", Path.home() / ".cache" / "mpqc")) / "arm64"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulated_board():
    if not (BOARD / "python").exists():
        pytest.skip(f"no emulated ARM64 board in {BOARD}: run `make arm64-device`")
    port = free_port()
    device = [str(REPO / "tools" / "arm64" / "device.sh")]
    subprocess.run(["bash", *device, "start", "--port", str(port), "--key", "arm64-test"],
                   check=True, timeout=180)
    yield RpcDevice("127.0.0.1", port, "arm64-test")
    subprocess.run(["bash", *device, "stop", "--port", str(port)], check=False, timeout=60)


@pytest.mark.parametrize("target_name", ["arm64-neon", "arm64-cortex-a72"])
@pytest.mark.parametrize("a_bits,w_bits", [(1, 1), (2, 2), (3, 5), (8, 8)])
@pytest.mark.parametrize("geometry", [(8, 8, 20, 16, 3, 1, 1), (9, 9, 64, 24, 3, 2, 1),
                                      (5, 5, 70, 8, 1, 1, 0)])
def test_arm64_kernel_exact_on_emulated_board(emulated_board, target_name, a_bits, w_bits,
                                             geometry):
    target = load_target(target_name)
    spec = conv_spec_for(*geometry, a_bits, w_bits, target)
    result = check_conv(spec, target, device=emulated_board)
    assert result.exact, result
    assert result.median_ms is None  # emulated timings are never reported
