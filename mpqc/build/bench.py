"""`mpqc bench FILE.so`: the library's latency at batch 1, and its peers in the same run."""
from __future__ import annotations

from dataclasses import asdict

from mpqc.errors import DeviceError


def bench_library(path, peers: bool = False, threads: int = 1, repeats: int = 30) -> dict:
    from mpqc import runtime
    from mpqc.build.network import NetworkSpec
    from mpqc.targets import host_cpu

    lib = runtime.load(path)
    if lib.batch != 1:
        raise DeviceError(f"{lib.path.name} is built for batch {lib.batch}; the benchmark "
                          "is at batch 1: compile with --batch 1")
    timings = {"mpqc": asdict(lib.time(repeats=repeats, threads=threads))}
    manifest = lib.manifest
    spec = NetworkSpec.from_json(manifest["network"])
    if peers:
        from mpqc.build.peers import fp32_network, time_peers
        for name, timing in time_peers(*fp32_network(spec), threads, repeats).items():
            timings[name] = asdict(timing)
    out = {"library": lib.path.name, "threads": threads, "batch": 1, "cpu": host_cpu(),
           "target": manifest["target"]["name"],
           "layers": [[l["name"], l["a"], l["w"]] for l in manifest["layers"]],
           "predicted_ms": manifest.get("predicted_ms"), "budget_ms": manifest.get("budget_ms"),
           "timings": timings}
    for name, timing in timings.items():
        out[f"{name}_ms"] = timing["median_ms"]
    if out["budget_ms"] is not None:
        out["within_budget"] = out["mpqc_ms"] <= out["budget_ms"]
    if out["predicted_ms"]:
        out["vs_predicted"] = out["mpqc_ms"] / out["predicted_ms"]
    if "ort_int8_ms" in out:
        out["speedup_vs_ort_int8"] = out["ort_int8_ms"] / out["mpqc_ms"]
    return out
