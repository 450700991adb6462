"""`mpqc verify`: the compiled library against the integer reference, layer by layer.

The reference model is rebuilt from the manifest, lowered to the same integer Program
(the lowering is deterministic) and run on the host; the library's `debug` entry point
returns every op's output. Integer outputs must be equal; the float logits may differ by
the float rounding of the final rescale (reported as max_abs_diff).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mpqc.errors import BuildError

LOGIT_TOLERANCE = 1e-4  # relative to the largest |logit|: float rounding of the rescale


@dataclass
class LayerCheck:
    name: str
    kind: str
    dtype: str
    equal: bool
    mismatches: int
    max_abs_diff: float


@dataclass
class VerifyResult:
    library: str
    target: str
    device: str
    images: int
    source: str
    exact: bool
    max_abs_diff: float
    first_mismatch: str | None
    top1_agreement: float
    layers: list[LayerCheck] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def verify_library(path, images: np.ndarray | None = None, count: int = 8, device=None,
                   source: str | None = None) -> VerifyResult:
    """Run library and reference on `images` (default: `count` test images of the
    manifest's data, else random normal images)."""
    from mpqc import runtime
    from mpqc.build.network import NetworkSpec, build_quantized_model, test_images
    from mpqc.lower import lower_to_program
    from mpqc.targets import target_from_dict

    lib = runtime.load(path, device=device)
    manifest = lib.manifest
    spec = NetworkSpec.from_json(manifest["network"])
    target = target_from_dict(manifest["target"], str(path))
    if images is None:
        images = test_images(spec, count)
        source = source or (f"{len(images)} test images of {spec.data}" if spec.data
                            else f"{len(images)} random normal images (seed 0)")
    model, shape = build_quantized_model(spec)
    program = lower_to_program(model, shape, target, batch=lib.batch)
    names = [v["producer"] for v in manifest["debug_values"]]
    if [program.values[i].producer for i in program.debug_values()] != names:
        raise BuildError(f"{lib.path.name}: the rebuilt reference has other layers than the "
                         "library (model, weights or configuration changed since it was "
                         "built); rebuild the library")
    expected = _reference(program, images, lib.batch)
    got = lib.debug(images)
    checks = []
    for value_id, actual in zip(program.debug_values(), got):
        value = program.values[value_id]
        want = expected[value_id]
        diff = np.abs(actual.astype(np.float64) - want.astype(np.float64))
        if value.kind == "float":
            scale = max(float(np.abs(want).max()), 1.0)
            equal = bool(diff.max() <= LOGIT_TOLERANCE * scale)
        else:
            equal = bool(actual.shape == want.shape and (actual == want).all())
        checks.append(LayerCheck(value.producer, value.kind, str(actual.dtype), equal,
                                 int((diff > 0).sum()), float(diff.max())))
    logits = got[program.debug_values().index(program.output)]
    ref_logits = expected[program.output]
    first = next((c.name for c in checks if not c.equal), None)
    return VerifyResult(
        library=lib.path.name, target=target.name,
        device=str(device) if device is not None else "host", images=len(images),
        source=source or "given images", exact=first is None,
        max_abs_diff=float(np.abs(logits - ref_logits).max()), first_mismatch=first,
        top1_agreement=float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
        layers=checks)


def _reference(program, images: np.ndarray, batch: int) -> dict[int, np.ndarray]:
    """The reference in chunks of the library's batch (the Program has a fixed batch)."""
    from mpqc.lower import run_reference
    parts: dict[int, list[np.ndarray]] = {}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - real, *chunk.shape[1:]),
                                                    chunk.dtype)])
        for key, value in run_reference(program, chunk).items():
            parts.setdefault(key, []).append(value[:real])
    return {key: np.concatenate(v) for key, v in parts.items()}
