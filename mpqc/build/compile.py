"""Build a deployable library: lower, compile with the Relax default pipeline, export
(cross-compiling for ARM64), write the manifest beside it.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mpqc.build.network import NetworkSpec, build_quantized_model, normalisation, sha256
from mpqc.errors import BuildError, TargetError, last_line

MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class CompileResult:
    library: Path
    manifest_path: Path
    manifest: dict
    seconds: float


def manifest_path_for(library) -> Path:
    library = Path(library)
    return library.with_name(library.name[:-3] + ".manifest.json" if library.name.endswith(".so")
                             else library.name + ".manifest.json")


def read_manifest(library) -> dict:
    path = manifest_path_for(library)
    if not path.is_file():
        raise BuildError(f"{path} not found: the manifest is written by `mpqc compile` "
                         f"beside the library; rebuild {library} with it")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"manifest {path} is not readable JSON ({exc})") from exc
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise BuildError(f"manifest {path} has schema {manifest.get('schema')!r}, expected "
                         f"{MANIFEST_SCHEMA}; rebuild the library with this mpqc")
    return manifest


def check_can_build(target) -> None:
    """A target that is not this machine's architecture needs its cross compiler."""
    import shutil
    host_arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                            platform.machine().lower())
    if target.arch == host_arch:
        return
    compiler = target.cross_compiler
    if not compiler:
        raise TargetError(f"target {target.name} ({target.arch}) needs a cross compiler from "
                          f"this {host_arch} machine and its file names none; set "
                          "\"cross_compiler\" (e.g. aarch64-linux-gnu-g++) in the target file")
    if shutil.which(compiler) is None:
        raise TargetError(f"target {target.name}: cross compiler {compiler} is not installed; "
                          "install it (apt-get install g++-aarch64-linux-gnu, or "
                          "`make arm64-device`)")


def compile_relax(module, target):
    import tvm
    from tvm import relax
    from mpqc.targets import tvm_target
    tt = tvm_target(target)
    try:
        return tvm.compile(module, tt, relax_pipeline=relax.get_default_pipeline(tt))
    except Exception as exc:  # TVM raises many error types
        raise BuildError(f"compiling the network for target {target.name} failed: "
                         f"{last_line(exc)}") from exc


def compile_library(spec: NetworkSpec, target, out, tuning_log=None, batch: int = 1,
                    predicted_ms: float | None = None, budget_ms: float | None = None,
                    model=None) -> CompileResult:
    """Build `out` (.so) and `out` minus .so plus .manifest.json for `target`.

    `model`: an already quantized model (else rebuilt from `spec`).
    """
    from mpqc.lower import lower
    from mpqc.remote import export_library

    start = time.perf_counter()
    check_can_build(target)
    out = Path(out)
    if out.suffix != ".so":
        raise BuildError(f"{out}: the library file name must end in .so")
    if model is None:
        model, shape = build_quantized_model(spec)
    else:
        from mpqc.build.network import default_input_shape
        shape = default_input_shape(spec)
    lowered = lower(model, shape, target, batch=batch, tuning_log=tuning_log)
    executable = compile_relax(lowered.module, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_library(executable, target, out)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"exporting {out} for target {target.name} failed: "
                         f"{last_line(exc)}") from exc
    seconds = time.perf_counter() - start
    manifest = _manifest(spec, target, lowered, out, batch, tuning_log, predicted_ms,
                         budget_ms, seconds)
    path = manifest_path_for(out)
    path.write_text(json.dumps(manifest, indent=2))
    return CompileResult(out, path, manifest, seconds)


def _manifest(spec, target, lowered, out: Path, batch, tuning_log, predicted_ms, budget_ms,
              seconds) -> dict:
    program = lowered.program
    layers = [{"name": l.name, "kind": l.kind, "a": l.a_bits, "w": l.w_bits, "impl": l.impl,
               "in_shape": list(l.in_shape), "out_shape": list(l.out_shape),
               **({"word_bits": lowered.variants[l.name][0].word_bits,
                   "knobs": lowered.variants[l.name][1].to_json()}
                  if l.name in lowered.variants else {})}
              for l in program.layers]
    return {
        "schema": MANIFEST_SCHEMA,
        "library": out.name,
        "sha256": sha256(out),
        "target": target.to_json(),
        "batch": batch,
        "input": {"shape": list(program.input_shape), "dtype": "float32", "layout": "NCHW",
                  "normalisation": normalisation(spec)},
        "output": {"shape": list(program.output_shape), "dtype": "float32"},
        "layers": layers,
        "debug_values": [program.values[i].to_json() for i in program.debug_values()],
        "predicted_ms": predicted_ms,
        "budget_ms": budget_ms,
        "tuning_log": str(tuning_log) if tuning_log else None,
        "compile_seconds": round(seconds, 2),
        "versions": _versions(),
        "git_revision": _git_revision(),
        "network": spec.describe().to_json(),
        "rebuild": "mpqc verify " + out.name + " (rebuilds the integer reference from "
                   "'network': model, weights/checkpoint, configuration, calibration)",
    }


def _versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("mpqc", "apache-tvm", "apache-tvm-ffi", "torch", "numpy", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
