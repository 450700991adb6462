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

from mpqc.build import LIBRARY_FORMAT
from mpqc.build.network import NetworkSpec, build_quantized_model, normalisation, sha256
from mpqc.errors import BuildError, TargetError, last_line

MANIFEST_SCHEMA = 1
EXEC_MODE = "compiled"


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
    from mpqc.schedules.tir_pipeline import tir_pipeline
    from mpqc.targets import tvm_target
    tt = tvm_target(target)
    try:
        # compiled, not bytecode: the VM's instructions become generated C instead of
        # interpreted calls, ~7% of a 1-bit ResNet-20 (0.158 -> 0.147 ms). It runs no
        # instrument hook, so Library.profile times each kernel alone instead.
        return relax.build(module, tt, relax_pipeline=relax.get_default_pipeline(tt),
                           tir_pipeline=tir_pipeline(), exec_mode=EXEC_MODE)
    except Exception as exc:  # TVM raises many error types
        raise BuildError(f"compiling the network for target {target.name} failed: "
                         f"{last_line(exc)}") from exc


def compile_library(spec: NetworkSpec, target, out, tuning_log=None, batch: int = 1,
                    predicted_ms: float | None = None, budget_ms: float | None = None,
                    model=None, latency_model=None) -> CompileResult:
    """Build `out` (.so) and `out` minus .so plus .manifest.json for `target`.

    `model`: an already quantized model (else rebuilt from `spec`). `latency_model` (a
    file from `mpqc fit`): predict the built configuration (kernels + the network's
    glue) into the manifest; `predicted_ms` still overrides the recorded total.
    """
    from mpqc.lower import lower
    from mpqc.remote import export_library

    start = time.perf_counter()
    check_can_build(target)
    out = Path(out)
    if out.suffix != ".so":
        raise BuildError(f"{out}: the library file name must end in .so")
    predictor = _load_predictor(latency_model, target)  # fails before the long build
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
    prediction = None
    if predictor is not None:
        prediction = predict_built(predictor, spec, lowered.program, target, latency_model)
        if predicted_ms is None:
            predicted_ms = prediction["total_ms"]
    manifest = _manifest(spec, target, lowered, out, batch, tuning_log, predicted_ms,
                         budget_ms, seconds)
    if prediction is not None:
        manifest["prediction"] = prediction
    path = manifest_path_for(out)
    path.write_text(json.dumps(manifest, indent=2))
    return CompileResult(out, path, manifest, seconds)


def _load_predictor(latency_model, target):
    if latency_model is None:
        return None
    from mpqc.errors import ConfigError
    from mpqc.latency.predictor import LatencyModel
    predictor = LatencyModel.load(latency_model)
    if predictor.target != target.name:
        raise ConfigError(f"latency model {latency_model} is of target {predictor.target}, "
                          f"not {target.name}: fit one for {target.name}")
    return predictor


def predict_built(predictor, spec: NetworkSpec, program, target, source=None) -> dict:
    """The predicted latency of the configuration as built (its bit-serial layers at the
    bits the program holds, plus the glue the model measured for this network), on the
    target's default threads (1 when it names none)."""
    from mpqc.latency.network import predict_network
    from mpqc.models import build_model, describe_layers
    from mpqc.build.network import default_input_shape

    shape = default_input_shape(spec)
    threads = target.default_threads or 1
    layers = describe_layers(build_model(spec.model, num_classes=spec.num_classes), shape,
                             first_last_8bit=True)
    built = {l.name: (l.a_bits, l.w_bits) for l in program.layers}
    missing = [l.name for l in layers if l.quantizable and l.name not in built]
    if missing:
        raise BuildError(f"cannot predict the library: layers {', '.join(missing)} of "
                         f"{spec.model} are not in the lowered program")
    config = {l.name: built[l.name] for l in layers if l.quantizable}
    glue = predictor.glue_ms(spec.model, shape, threads)
    net = predict_network(predictor, layers, config, threads, glue or 0.0,
                          predictor.kernel_scale(spec.model, shape, threads))
    return {"latency_model": str(source) if source else None, "target": predictor.target,
            "threads": threads, "batch": 1, "total_ms": net.total_ms, "glue_ms": net.glue_ms,
            "kernel_scale": net.kernel_scale,
            "glue_measured": glue is not None,
            "layers": [dict(l.__dict__) for l in net.layers]}


def _manifest(spec, target, lowered, out: Path, batch, tuning_log, predicted_ms, budget_ms,
              seconds) -> dict:
    from mpqc.lower.relax_emit import kernel_signatures
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
        # every kernel main calls, with its arguments: Library.profile runs each alone
        "kernels": kernel_signatures(lowered.module),
        "exec_mode": EXEC_MODE,
        "library_format": LIBRARY_FORMAT,
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
