"""Named, resumable steps.

A step is up to date when its stamp (steps/NAME.json) records the hash of the inputs it
has now (its options and the sha256 of the artifacts it reads) and its own artifacts are
there with the sha256 it wrote. A step is stamped only after it finished, so a killed
step runs again; the steps themselves resume inside (the measurement database skips
what it holds, the search continues from its per-epoch checkpoint). A step that starts
with inputs other than those of its interrupted attempt first deletes that attempt's
scratch (a checkpoint of another search would be refused).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mpqc.errors import ConfigError
from mpqc.pipeline.config import PipelineConfig, Workspace


@dataclass(frozen=True)
class Step:
    name: str
    doc: str
    run: Callable[[PipelineConfig, Workspace], dict]           # returns facts for the stamp
    outputs: Callable[[PipelineConfig, Workspace], list[Path]]
    reads: Callable[[PipelineConfig, Workspace], list[Path]]    # artifacts of earlier steps
    options: tuple[str, ...] = ()                               # PipelineConfig fields it uses
    scratch: Callable[[PipelineConfig, Workspace], list[Path]] = lambda cfg, ws: []
    files: Callable[[PipelineConfig], list[str]] = lambda cfg: []   # user files it reads


@dataclass
class StepOutcome:
    name: str
    status: str            # "ran" | "skipped (up to date)" | "not selected"
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# steps whose artifacts depend on the kernels' code or the library's build: a new
# SCHEDULE_VERSION or LIBRARY_FORMAT redoes them
# (and, through their artifacts, every step after them)
KERNEL_STEPS = ("measure", "lower", "build")
# steps whose artifacts are fake-quant models: a new mpqc.quant.model.FORMAT redoes them
QUANT_STEPS = ("search", "finetune")


def inputs_hash(step: Step, cfg: PipelineConfig, ws: Workspace) -> str:
    parts = {"step": step.name, "options": {k: getattr(cfg, k) for k in step.options},
             "reads": {}, "files": {}}
    if step.name in KERNEL_STEPS:
        from mpqc.build import LIBRARY_FORMAT
        from mpqc.schedules import SCHEDULE_VERSION
        parts["schedules"], parts["library"] = SCHEDULE_VERSION, LIBRARY_FORMAT
    if step.name in QUANT_STEPS:
        from mpqc.quant.model import FORMAT
        parts["quantized"] = FORMAT
    for path in step.reads(cfg, ws):
        if not path.is_file():
            raise ConfigError(f"step {step.name} needs {path.name}, which an earlier step "
                              f"writes and is not in {ws.root}; run the earlier steps "
                              "(drop --from-step)")
        parts["reads"][path.name] = _sha256(path)
    for name in step.files(cfg):
        parts["files"][name] = _sha256(Path(name)) if Path(name).is_file() else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_stamp(ws: Workspace, name: str) -> dict | None:
    path = ws.stamps / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def up_to_date(step: Step, cfg: PipelineConfig, ws: Workspace, digest: str) -> bool:
    stamp = read_stamp(ws, step.name)
    if not stamp or stamp.get("inputs") != digest:
        return False
    for path in step.outputs(cfg, ws):
        if not path.is_file() or stamp["outputs"].get(path.name) != _sha256(path):
            return False
    return True


def run_step(step: Step, cfg: PipelineConfig, ws: Workspace, force: bool = False) -> StepOutcome:
    digest = inputs_hash(step, cfg, ws)
    if not force and up_to_date(step, cfg, ws, digest):
        stamp = read_stamp(ws, step.name)
        return StepOutcome(step.name, "skipped (up to date)", 0.0, stamp.get("facts", {}))
    attempt = ws.stamps / f"{step.name}.started.json"
    previous = None
    if attempt.is_file():
        try:
            previous = json.loads(attempt.read_text()).get("inputs")
        except (OSError, json.JSONDecodeError):
            previous = None
    if previous != digest:
        for path in step.scratch(cfg, ws):
            path.unlink(missing_ok=True)
    (ws.stamps / f"{step.name}.json").unlink(missing_ok=True)
    _write_json(attempt, {"inputs": digest, "started": time.time()})
    start = time.perf_counter()
    facts = step.run(cfg, ws) or {}
    seconds = time.perf_counter() - start
    _write_json(ws.stamps / f"{step.name}.json",
                {"step": step.name, "inputs": digest, "finished": time.time(),
                 "seconds": round(seconds, 2), "facts": facts,
                 "outputs": {p.name: _sha256(p) for p in step.outputs(cfg, ws)}})
    attempt.unlink(missing_ok=True)
    return StepOutcome(step.name, "ran", seconds, facts)


def select(steps: list[Step], from_step: str | None, until_step: str | None) -> list[Step]:
    names = [s.name for s in steps]
    for given, flag in ((from_step, "--from-step"), (until_step, "--until-step")):
        if given is not None and given not in names:
            raise ConfigError(f"{flag} {given!r} is not a step; the steps are "
                              + ", ".join(names))
    lo = names.index(from_step) if from_step else 0
    hi = names.index(until_step) if until_step else len(names) - 1
    if lo > hi:
        raise ConfigError(f"--from-step {from_step} comes after --until-step {until_step}")
    return steps[lo:hi + 1]


def run_steps(steps: list[Step], cfg: PipelineConfig, ws: Workspace,
              from_step: str | None = None, until_step: str | None = None,
              on_start: Callable[[int, int, Step], None] = lambda i, n, s: None,
              on_done: Callable[[StepOutcome], None] = lambda o: None) -> list[StepOutcome]:
    """Run the selected steps in order; --from-step forces its first step to run again
    (later ones rerun when their inputs changed, as always)."""
    chosen = select(steps, from_step, until_step)
    ws.root.mkdir(parents=True, exist_ok=True)
    _write_json(ws.path("pipeline.json"), cfg.to_json())
    outcomes = []
    for i, step in enumerate(chosen):
        on_start(i, len(chosen), step)
        outcome = run_step(step, cfg, ws, force=bool(from_step) and i == 0)
        outcomes.append(outcome)
        on_done(outcome)
    return outcomes
