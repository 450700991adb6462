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


def test_measure_through_the_tracker_on_the_emulated_board(emulated_board, tmp_path):
    """The hardware-in-the-loop path for ARM: cross-compiled, uploaded, timed there, and
    flagged as emulated (so `fit` refuses the timings)."""
    from mpqc.errors import DataError
    from mpqc.latency.measure import run_measurements
    from mpqc.latency.predictor import fit_latency_model
    from mpqc.latency.records import LayerShape, read_db
    from mpqc.latency.space import Job

    target = load_target("arm64-cortex-a72")
    jobs = [Job(LayerShape("conv2d", 8, 8, 16, 16, 3, 1, 1), a, w) for a, w in ((1, 1), (2, 3))]
    summary = run_measurements(jobs, tmp_path / "arm.jsonl", target, repeats=2,
                               device=emulated_board)
    assert summary.failed == [] and summary.measured == 2
    records = read_db(tmp_path / "arm.jsonl")
    assert all(r.ok and r.emulated and r.device.startswith("rpc:127.0.0.1:") for r in records)
    assert all(r.target == "arm64-cortex-a72" for r in records)
    with pytest.raises(DataError, match="emulated"):
        fit_latency_model(records, target)
