"""Shared test fixtures: where ../shared is, and skipping with a stated reason."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file of ../shared, or skip: users' clones do not have it, CI does."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} not present (only in the project's CI/dev checkout)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def rpc_farm():
    """A TVM tracker and two RPC servers under one key, all bound to 127.0.0.1."""
    tracker_port = free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(tracker_port), "--port-end", str(tracker_port + 1)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wait_port(tracker_port)
    server_ports = []
    for _ in range(2):
        port = free_port()
        server_ports.append(port)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
             "--port-end", str(port + 1), "--tracker", f"127.0.0.1:{tracker_port}",
             "--key", "farm-test"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from mpqc.latency.measure import free_devices
    from mpqc.remote import RpcDevice
    device = RpcDevice("127.0.0.1", tracker_port, "farm-test")
    end = time.time() + 60
    while free_devices(device) < 2:
        if time.time() > end:
            raise RuntimeError("the two RPC servers did not register")
        time.sleep(0.5)
    yield device, server_ports
    for p in procs:
        p.kill()
        p.wait()
