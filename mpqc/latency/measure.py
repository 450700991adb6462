"""Measure bit-serial layers on a target: here, or on boards behind a TVM RPC tracker.

A layer costs what the network pays for it: the activation bit-packing plus the fused
convolution (with the requantizing epilogue that passes codes to the next layer), each
timed with TVM's own timer (warm-up, then `repeats` samples of enough calls to last
>= 20 ms; median/min/max) under the same thread count. Schedules come from the tuning
log when it holds the layer, else from the target's defaults, as the build does.

Remote measurement builds on the host (cross-compiling for ARM64), uploads one library
with both kernels and times it on the device. With several devices under one key, one
worker per device pulls jobs from a shared queue, so a farm of boards measures in
parallel; a device that dies mid-run turns its job into an error record and the others
go on.
"""
from __future__ import annotations

import platform
import queue
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mpqc.errors import ConfigError, DeviceError, MpqcError, last_line
from mpqc.latency.records import (LatencyRecord, append_db, measured_counts, now,
                                  package_versions, read_db)
from mpqc.latency.space import Job

_BUILD_LOCK = threading.Lock()  # one compilation at a time: builds are short, TVM's
                                # pass infrastructure is not meant for concurrent use


@dataclass(frozen=True)
class MeasureSummary:
    measured: int
    skipped: int
    failed: list[LatencyRecord]


def layer_spec(job: Job, target, tuning_log=None):
    """(ConvSpec with the network's epilogue, knobs) the build would use for this layer."""
    from mpqc.kernel_check import conv_spec_for
    from mpqc.schedules.build import default_knobs
    from mpqc.tuning import best_variant

    s = job.shape
    spec = conv_spec_for(s.h, s.w, s.cin, s.cout, s.kernel, s.stride, s.padding,
                         job.a_bits, job.w_bits, target)
    tuned = best_variant(tuning_log, spec, target)
    if tuned is not None:
        return tuned[0], tuned[1].fit(tuned[0])
    return spec, default_knobs(target).fit(spec)


def build_layer(spec, knobs, target):
    """One library with two functions: "bitpack" (codes -> planes) and "conv"."""
    import tvm

    from mpqc.errors import BuildError
    from mpqc.schedules.build import conv_prim_func, pack_input_prim_func, pack_style
    from mpqc.targets import tvm_target

    mod = tvm.IRModule({"conv": conv_prim_func(spec, knobs, "conv"),
                        "bitpack": pack_input_prim_func(spec, knobs, "bitpack",
                                                        pack_style(target))})
    with _BUILD_LOCK:
        try:
            return tvm.compile(mod, tvm_target(target))
        except Exception as exc:
            raise BuildError(f"building {spec.name} for target {target.name} failed: "
                             f"{last_line(exc)}") from exc


def layer_arguments(spec, knobs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(bitpack args, conv args) as numpy arrays; the values do not change the time."""
    from mpqc.kernel_check import random_operands
    from mpqc.schedules.build import packed_weights, reference_input

    codes, weights, mul, add = random_operands(spec)
    planes = reference_input(codes, spec, knobs)
    out = np.zeros((spec.n, spec.out_h, spec.out_w, spec.cout), np.uint8)
    return ([codes, np.zeros_like(planes)],
            [planes, packed_weights(weights, spec, knobs), mul, add, out])


def time_layer(lib, dev, spec, knobs, repeats: int):
    """(conv Timing, pack Timing) of a built layer library on `dev` (local or remote)."""
    import tvm

    from mpqc.bench.timing import time_tvm

    pack_args, conv_args = layer_arguments(spec, knobs)
    pack_t = [tvm.runtime.tensor(a, dev) for a in pack_args]
    conv_t = [tvm.runtime.tensor(a, dev) for a in conv_args]
    return (time_tvm(lib, "conv", dev, conv_t, repeats=repeats),
            time_tvm(lib, "bitpack", dev, pack_t, repeats=repeats))


def _record(job: Job, target, threads: int, spec=None, knobs=None, conv=None, pack=None,
            device: str = "", emulated: bool = False, error: str = "") -> LatencyRecord:
    timed = conv is not None and pack is not None
    return LatencyRecord(
        target=target.name, target_tvm=dict(target.tvm_target), shape=job.shape,
        a_bits=job.a_bits, w_bits=job.w_bits, threads=threads,
        median_ms=conv.median_ms + pack.median_ms if timed else None,
        min_ms=conv.min_ms + pack.min_ms if timed else None,
        max_ms=conv.max_ms + pack.max_ms if timed else None,
        repeats=conv.repeats if timed else 0,
        conv_ms=conv.median_ms if timed else None, pack_ms=pack.median_ms if timed else None,
        word_bits=spec.word_bits if spec is not None else 0,
        knobs=knobs.to_json() if knobs is not None else {}, device=device, emulated=emulated,
        versions=package_versions(), timestamp=now(), error=error)


def measure_local(job: Job, target, threads: int, repeats: int, tuning_log=None) -> LatencyRecord:
    import tvm

    from mpqc.bench.timing import pinned_threads

    spec, knobs = layer_spec(job, target, tuning_log)
    lib = build_layer(spec, knobs, target)
    with pinned_threads(threads):
        conv, pack = time_layer(lib, tvm.cpu(), spec, knobs, repeats)
    return _record(job, target, threads, spec, knobs, conv, pack,
                   device=f"host:{socket.gethostname()}")


# ---- remote ------------------------------------------------------------------------

def request_device(device, timeout: int = 600):
    """(RPC session, "host:port" of the server the tracker chose).

    tracker.request() hides which server it picked; the farm needs it to say which board
    measured what, so this repeats its two protocol messages.
    """
    from tvm.rpc import base
    from tvm.rpc.client import connect, connect_tracker

    try:  # TVM retries a dead tracker for a minute; a plain connect fails fast
        socket.create_connection((device.tracker_host, device.tracker_port), timeout=5).close()
        tracker = connect_tracker(device.tracker_host, device.tracker_port)
    except Exception as exc:
        raise DeviceError(f"cannot reach the RPC tracker {device.tracker_host}:"
                          f"{device.tracker_port}: {last_line(exc)}; start it "
                          "(python -m tvm.exec.rpc_tracker) or fix --rpc-tracker") from exc
    try:
        base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, device.key, "", 1])
        value = base.recvjson(tracker._sock)
        if value[0] != base.TrackerCode.SUCCESS:
            raise DeviceError(f"the tracker refused a device for {device}: {value}")
        host, port, matchkey = value[1]
        return connect(host, port, matchkey, timeout), f"{host}:{port}"
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"no device answered for {device}: {last_line(exc)}; check that "
                          "a board's RPC server is registered under that key") from exc
    finally:
        tracker.close()


def free_devices(device) -> int:
    """How many servers are registered under the key and idle (0 if unknown)."""
    from tvm.rpc.client import connect_tracker
    try:
        socket.create_connection((device.tracker_host, device.tracker_port), timeout=5).close()
        summary = connect_tracker(device.tracker_host, device.tracker_port).summary()
    except Exception as exc:
        raise DeviceError(f"cannot reach the RPC tracker {device.tracker_host}:"
                          f"{device.tracker_port}: {last_line(exc)}") from exc
    return int(summary.get("queue_info", {}).get(device.key, {}).get("free", 0))


def is_emulated(target, server: str) -> bool:
    """A board of another architecture answering on this machine's loopback can only be
    an emulator (tools/arm64/device.sh runs the RPC server under qemu-user)."""
    from mpqc.targets import runs_on_host
    host = server.rsplit(":", 1)[0]
    return not runs_on_host(target) and host in ("127.0.0.1", "localhost", "::1",
                                                 socket.gethostname())


class _RemoteWorker:
    """One board: holds a session, measures jobs, reconnects after a failure."""

    def __init__(self, device, target, threads: int, repeats: int, tuning_log, emulated):
        self.device, self.target, self.threads = device, target, threads
        self.repeats, self.tuning_log, self.force_emulated = repeats, tuning_log, emulated
        self.session, self.server = None, ""

    def measure(self, job: Job) -> LatencyRecord:
        spec = knobs = None
        try:
            spec, knobs = layer_spec(job, self.target, self.tuning_log)
            lib = build_layer(spec, knobs, self.target)
            if self.session is None:
                self.session, self.server = request_device(self.device)
            conv, pack = self._run(lib, spec, knobs)
        except MpqcError as exc:
            return _record(job, self.target, self.threads, spec, knobs,
                           device=f"rpc:{self.server}", error=str(exc))
        except Exception as exc:  # a dropped connection surfaces as many TVM error types
            self.session = None
            return _record(job, self.target, self.threads, spec, knobs,
                           device=f"rpc:{self.server}",
                           error=f"device {self.server or self.device} failed: {last_line(exc)}")
        emulated = self.force_emulated or is_emulated(self.target, self.server)
        return _record(job, self.target, self.threads, spec, knobs, conv, pack,
                       device=f"rpc:{self.server}", emulated=emulated)

    def _run(self, lib, spec, knobs):
        from mpqc.remote import export_library
        with tempfile.TemporaryDirectory(prefix="mpqc-measure-") as tmp:
            so = export_library(lib, self.target, Path(tmp) / f"{spec.name}.so")
            self.session.upload(str(so))
            remote = self.session.load_module(so.name)
        dev = self.session.cpu()
        self.session.get_function("runtime.config_threadpool")(1, self.threads)
        return time_layer(remote, dev, spec, knobs, self.repeats)


# ---- the run -----------------------------------------------------------------------

def pending_jobs(jobs: list[Job], db_path, target, threads: int, passes: int = 1
                 ) -> tuple[list[Job], int]:
    """(jobs with fewer than `passes` successful measurements in the database, how many
    job passes the database already holds)."""
    from mpqc.latency.records import job_key
    done = measured_counts(read_db(db_path))
    counts = [done.get(job_key(target.name, j.shape, j.a_bits, j.w_bits, threads), 0)
              for j in jobs]
    return ([j for j, c in zip(jobs, counts) if c < passes],
            sum(min(c, passes) for c in counts))


def run_measurements(jobs: list[Job], db_path, target, threads: int = 1, repeats: int = 20,
                     device=None, workers: int | None = None, tuning_log=None,
                     emulated: bool = False,
                     progress: Callable[[LatencyRecord], None] = lambda r: None,
                     passes: int = 1) -> MeasureSummary:
    """Measure every job until the database holds `passes` successful records of it,
    appending one record per measurement.

    Passes run one after another over all jobs, so the measurements of one kernel lie
    minutes apart: on a shared machine a slow spell (a busy neighbour, a lower clock)
    then spoils one of them, not all, and the fit keeps the fastest. Locally, jobs run
    one after another (timings need the cores to themselves). With a `device`
    (mpqc.remote.RpcDevice), `workers` threads (default: the idle servers under its key)
    each hold one board. Failures become error records; the run goes on.
    """
    from mpqc.targets import runs_on_host

    if passes < 1:
        raise ConfigError(f"passes {passes}: measure each kernel at least once")
    if device is None and not runs_on_host(target):
        raise DeviceError(f"target {target.name} ({target.arch}) cannot run on this "
                          f"machine ({platform.machine()}); measure it on a board over "
                          "TVM RPC (--rpc-tracker HOST:PORT --rpc-key KEY)")
    _, skipped = pending_jobs(jobs, db_path, target, threads, passes)
    failed: list[LatencyRecord] = []
    measured = 0
    for pass_no in range(1, passes + 1):
        todo, _ = pending_jobs(jobs, db_path, target, threads, pass_no)
        if not todo:
            continue
        if device is None:
            records = _measure_here(todo, db_path, target, threads, repeats, tuning_log,
                                    progress)
        else:
            records = _measure_remote(todo, db_path, target, threads, repeats, device,
                                      workers, tuning_log, emulated, progress)
        failed += [r for r in records if not r.ok]
        measured += sum(r.ok for r in records)
    return MeasureSummary(measured, skipped, failed)


def _measure_here(todo, db_path, target, threads, repeats, tuning_log, progress):
    records = []
    for job in todo:
        try:
            record = measure_local(job, target, threads, repeats, tuning_log)
        except MpqcError as exc:
            record = _record(job, target, threads, device=f"host:{socket.gethostname()}",
                             error=str(exc))
        append_db(db_path, record)
        records.append(record)
        progress(record)
    return records


def _measure_remote(todo, db_path, target, threads, repeats, device, workers, tuning_log,
                    emulated, progress):
    records: list[LatencyRecord] = []

    def keep(record: LatencyRecord) -> None:
        append_db(db_path, record)
        records.append(record)
        progress(record)

    count = workers or max(1, free_devices(device))
    jobs_q: queue.Queue[Job] = queue.Queue()
    for job in todo:
        jobs_q.put(job)
    lock = threading.Lock()

    def serve() -> None:
        worker = _RemoteWorker(device, target, threads, repeats, tuning_log, emulated)
        while True:
            try:
                job = jobs_q.get_nowait()
            except queue.Empty:
                break
            record = worker.measure(job)
            with lock:
                keep(record)
        if worker.session is not None:
            worker.session = None  # closes the connection; the tracker frees the board

    threads_ = [threading.Thread(target=serve, name=f"mpqc-measure-{i}", daemon=True)
                for i in range(min(count, max(len(todo), 1)))]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    return records
