"""Running compiled kernels on remote boards through a TVM RPC tracker.

The host builds (cross-compiling for ARM64 with the target's compiler), uploads the
library to a device registered at the tracker under the target's key, runs it there and
brings the results back. A dead tracker or device is a DeviceError naming the tracker,
the key and what to do.
"""
from __future__ import annotations

import platform
import socket
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpqc.errors import BuildError, DeviceError, last_line


@dataclass(frozen=True)
class RpcDevice:
    tracker_host: str
    tracker_port: int
    key: str
    session_timeout: int = 600

    @staticmethod
    def parse(tracker: str, key: str) -> "RpcDevice":
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise DeviceError(f"RPC tracker {tracker!r} is not HOST:PORT")
        return RpcDevice(host, int(port), key)

    def __str__(self) -> str:
        return f"key {self.key!r} at tracker {self.tracker_host}:{self.tracker_port}"


def export_library(lib, target, path: str | Path) -> Path:
    """Write a loadable .so for the target, cross-compiling when it is not this machine."""
    path = Path(path)
    native = target.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower())
    if native:
        lib.export_library(str(path))
        return path
    compiler = target.cross_compiler
    if not compiler or shutil.which(compiler) is None:
        raise BuildError(f"target {target.name}: cross compiler {compiler or '(none set)'} not "
                         "found; install it (`make arm64-device` installs "
                         "g++-aarch64-linux-gnu) or set cross_compiler in the target file")
    from tvm.support import cc
    lib.export_library(str(path), fcompile=cc.cross_compiler(compiler))
    return path


def connect(device: RpcDevice):
    from tvm import rpc
    try:
        # TVM retries a dead tracker for a minute; a plain connect fails fast
        socket.create_connection((device.tracker_host, device.tracker_port), timeout=5).close()
        tracker = rpc.connect_tracker(device.tracker_host, device.tracker_port)
    except Exception as exc:
        raise DeviceError(f"cannot reach the RPC tracker {device.tracker_host}:"
                          f"{device.tracker_port}: {last_line(exc)}; "
                          "start it (python -m tvm.exec.rpc_tracker) or fix --rpc-tracker") from exc
    try:
        return tracker.request(device.key, priority=1, session_timeout=device.session_timeout)
    except Exception as exc:
        raise DeviceError(f"no device answered for {device}: "
                          f"{last_line(exc)}; check that a board's RPC "
                          "server is registered under that key") from exc


def run_remote(lib, target, device: RpcDevice, func: str, args: list[np.ndarray],
               time_repeats: int = 0):
    """Run `func` of `lib` on the device; returns (outputs as numpy, median seconds or None).

    The last argument is the output buffer, as in every mpqc prim func.
    """
    session = connect(device)
    with tempfile.TemporaryDirectory(prefix="mpqc-rpc-") as tmp:
        so = export_library(lib, target, Path(tmp) / "kernel.so")
        try:
            session.upload(str(so))
            remote_lib = session.load_module(so.name)
            dev = session.cpu()
            import tvm
            tensors = [tvm.runtime.tensor(a, dev) for a in args]
            remote_lib[func](*tensors)
            median = None
            if time_repeats:
                timer = remote_lib.time_evaluator(func, dev, number=1, repeat=time_repeats)
                median = float(np.median(timer(*tensors).results))
            return tensors[-1].numpy(), median
        except DeviceError:
            raise
        except Exception as exc:
            raise DeviceError(f"running {func} for target {target.name} on {device} failed: "
                              f"{last_line(exc)}") from exc
