"""Targets as data: one JSON file per CPU family in this package, plus `host`.

A target says how to compile for a CPU (the TVM target dict, a cross compiler), which
schedule family and popcount flavour its kernels use, and where to find boards of that
kind (an RPC key). A user's own target is a JSON file of the same form, passed by path
wherever a target name is accepted. `host` is this machine's CPU as LLVM detects it;
the machines here change CPU between days, so it is detected each time, never assumed.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from mpqc.errors import TargetError, last_line

SCHEMA_VERSION = 1
ARCHES = ("x86_64", "aarch64")
SCHEDULE_FAMILIES = ("x86", "arm")
POPCOUNT_FLAVOURS = ("avx2-vpshufb", "avx512-vpopcntdq", "neon-cnt", "scalar")
PACK_WORD_BITS = (8, 16, 32, 64)
HOST = "host"
_REQUIRED_KEYS = ("name", "arch", "tvm_target", "schedule", "simd_bits", "popcount",
                  "pack_word_bits")


@dataclass(frozen=True)
class Target:
    name: str
    arch: str                       # "x86_64" | "aarch64"
    tvm_target: dict[str, Any]      # what tvm.target.Target takes
    schedule: str                   # schedule family in mpqc.schedules
    simd_bits: int
    popcount: str
    pack_word_bits: int             # bit-plane word the kernels pack channels into
    description: str = ""
    cross_compiler: str | None = None
    default_threads: int | None = None  # None: all cores of the device
    rpc_key: str | None = None
    required_features: tuple[str, ...] = ()  # LLVM feature names the CPU must have
    detect_mcpu: tuple[str, ...] = ()        # host CPUs that select this target exactly
    source: str = field(default="builtin", compare=False)

    @property
    def mcpu(self) -> str | None:
        return self.tvm_target.get("mcpu")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["required_features"] = list(self.required_features)
        out["detect_mcpu"] = list(self.detect_mcpu)
        return out


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def target_from_dict(spec: dict[str, Any], source: str) -> Target:
    """Validate a target description; errors name the file and the offending key."""
    missing = [k for k in _REQUIRED_KEYS if k not in spec]
    if missing:
        raise TargetError(f"target file {source}: missing key(s) {', '.join(missing)}")

    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            raise TargetError(f"target file {source}: '{key}' is {spec[key]!r}, expected {expected}")

    check("arch", spec["arch"] in ARCHES, " or ".join(ARCHES))
    check("schedule", spec["schedule"] in SCHEDULE_FAMILIES, " or ".join(SCHEDULE_FAMILIES))
    check("popcount", spec["popcount"] in POPCOUNT_FLAVOURS, " or ".join(POPCOUNT_FLAVOURS))
    check("pack_word_bits", spec["pack_word_bits"] in PACK_WORD_BITS, str(PACK_WORD_BITS))
    check("simd_bits", isinstance(spec["simd_bits"], int) and spec["simd_bits"] > 0,
          "a positive integer")
    tt = spec["tvm_target"]
    check("tvm_target", isinstance(tt, dict) and tt.get("kind") == "llvm",
          'a dict with "kind": "llvm"')
    threads = spec.get("default_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise TargetError(f"target file {source}: 'default_threads' must be null or >= 1")
    known = {f for f in Target.__dataclass_fields__} | {"schema"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise TargetError(f"target file {source}: unknown key(s) {', '.join(unknown)}")
    return Target(
        name=str(spec["name"]), arch=spec["arch"], tvm_target=dict(tt),
        schedule=spec["schedule"], simd_bits=spec["simd_bits"], popcount=spec["popcount"],
        pack_word_bits=spec["pack_word_bits"], description=spec.get("description", ""),
        cross_compiler=spec.get("cross_compiler"), default_threads=threads,
        rpc_key=spec.get("rpc_key"),
        required_features=tuple(spec.get("required_features", ())),
        detect_mcpu=tuple(spec.get("detect_mcpu", ())), source=source)


def _read_target_file(path: Path, source: str) -> Target:
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise TargetError(f"cannot read target file {source}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TargetError(f"target file {source} is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise TargetError(f"target file {source} must hold a JSON object")
    return target_from_dict(spec, source)


@lru_cache(maxsize=1)
def builtin_targets() -> dict[str, Target]:
    """The target files shipped in this package, by name."""
    found: dict[str, Target] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            target = _read_target_file(Path(str(entry)), f"builtin:{entry.name}")
            found[target.name] = target
    return found


@lru_cache(maxsize=1)
def host_cpu() -> str:
    from tvm.target import codegen
    return codegen.llvm_get_system_cpu()


@lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """LLVM feature names of this machine's CPU (as LLVM detects it)."""
    import tvm
    from tvm.target import codegen
    return frozenset(codegen.llvm_get_cpu_features(tvm.target.Target(_host_tvm_target())))


def _host_tvm_target() -> dict[str, Any]:
    triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(_host_arch())
    if triple is None:
        raise TargetError(f"host CPU architecture {platform.machine()!r} is not supported; "
                          f"mpqc builds for {', '.join(ARCHES)}")
    return {"kind": "llvm", "mtriple": triple, "mcpu": host_cpu()}


def host_target() -> Target:
    """This machine's CPU: the detected built-in target's data with the exact host mcpu."""
    base = detect_target()
    tt = _host_tvm_target()
    # The portable mattr of the family adds nothing to an exact mcpu; drop it so LLVM
    # uses the CPU's own features and tuning.
    return Target(
        name=HOST, arch=base.arch, tvm_target=tt, schedule=base.schedule,
        simd_bits=base.simd_bits, popcount=base.popcount, pack_word_bits=base.pack_word_bits,
        description=f"this machine ({tt['mcpu']}, detected as {base.name})",
        cross_compiler=None, default_threads=None, rpc_key=None,
        required_features=base.required_features, source=f"host:{base.name}")


def detect_target() -> Target:
    """The built-in target that best matches this machine's CPU.

    A target matches when its arch is the host's and the host has all its required
    features; an exact `detect_mcpu` match wins, then the most features required.
    """
    arch, cpu, feats = _host_arch(), host_cpu(), host_features()
    candidates = []
    for target in builtin_targets().values():
        if target.arch != arch or not set(target.required_features) <= feats:
            continue
        if target.detect_mcpu and cpu not in target.detect_mcpu:
            continue
        candidates.append(((bool(target.detect_mcpu), len(target.required_features)), target))
    if not candidates:
        raise TargetError(f"no built-in target matches this CPU ({arch}, {cpu}); write a "
                          "target file for it (see targets/*.json) and pass its path")
    return max(candidates, key=lambda c: c[0])[1]


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A built-in target by name, `host`, or the path of a user's target JSON file."""
    text = str(name_or_path)
    if text == HOST:
        return host_target()
    if text in builtin_targets():
        return builtin_targets()[text]
    path = Path(text).expanduser()
    if path.suffix == ".json" or path.exists() or os.sep in text:
        if not path.is_file():
            raise TargetError(f"target file {path} does not exist")
        return _read_target_file(path, str(path))
    known = ", ".join([HOST, *builtin_targets()])
    raise TargetError(f"unknown target {text!r}; known targets: {known} "
                      "(or the path of a target .json file)")


def all_targets(include_host: bool = True) -> list[Target]:
    targets = list(builtin_targets().values())
    return ([host_target()] if include_host else []) + targets


def tvm_target(target: Target):
    """The tvm.target.Target of a target (imports tvm lazily)."""
    import tvm
    try:
        return tvm.target.Target(target.tvm_target)
    except Exception as exc:  # TVM raises its own error types for bad dicts
        raise TargetError(f"target {target.name}: TVM rejects {target.tvm_target}: "
                          f"{last_line(exc)}") from exc


def runs_on_host(target: Target) -> bool:
    """Whether code built for `target` can run on this machine without a remote device."""
    return (target.arch == _host_arch()
            and set(target.required_features) <= host_features())
