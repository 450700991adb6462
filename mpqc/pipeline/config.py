"""What a pipeline run is asked to do, and where each step's artifact lives."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PipelineConfig:
    model: str = "democnn"
    data: str = "mnist"
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None   # user models: C,H,W
    target: str = "host"
    budget_ms: float | None = None
    budget_ratio: float | None = None
    budget_ort_ratio: float | None = None   # R x onnxruntime int8 of the model, timed here
    method: str = "bpnas"
    gamma_max: float = 0.05     # BP-NAS Prob-1 weight at the end of the search
    spend_slack: bool = True    # raise the argmax's bits while within budget
    choice: str = "loss"        # argmax -> budget by the supernet's loss, or "strengths"
    margin: float = 0.03        # chosen configuration under (1 - margin) x budget (predicted)
    lr: float = 1e-3            # Adam rate of the weights in search and fine-tuning
    bits: str = "1,2,3,4"
    a_bits: str | None = None   # activation candidates of the search (default: bits)
    w_bits: str | None = None   # weight candidates of the search (default: bits)
    epochs: int = 2
    finetune_epochs: int = 1
    fp32_epochs: int = 2
    fp32_finetune_epochs: int = 0   # with --weights: fp32 fine-tuning on this data first
    distill: float = 0.0        # fp32 teacher's weight in the QAT loss
    finetune_from: str = "supernet"  # the chosen config's QAT start: "supernet" or "fp32"
    subset: int | None = None
    batch_size: int = 128
    seed: int = 0
    threads: int = 1
    random_shapes: int = 24     # measured besides the model's layers, for the predictor
    repeats: int = 10           # timed samples per kernel
    passes: int = 2             # whole measuring passes; the fit keeps the fastest
    baselines: tuple[tuple[int, int], ...] | None = None   # None: smallest and largest uniform
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    tuning_log: str | None = None
    verify_images: int = 8
    accuracy_images: int | None = None  # the library's own test accuracy: None all, 0 none
    bench_repeats: int = 30
    progress: bool = True

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Workspace:
    """Artifact paths of one workdir (one pipeline run of one model)."""
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def stamps(self) -> Path:
        return self.root / "steps"

    layers = property(lambda self: self.root / "layers.json")
    latency_db = property(lambda self: self.root / "latency.jsonl")
    glue = property(lambda self: self.root / "glue.json")
    latency_model = property(lambda self: self.root / "latency_model.json")
    search = property(lambda self: self.root / "search.json")
    peers = property(lambda self: self.root / "peers.json")
    search_checkpoint = property(lambda self: self.root / "search.ckpt")
    fp32_weights = property(lambda self: self.root / "search.fp32.pt")
    finetune = property(lambda self: self.root / "finetune.json")
    quantized = property(lambda self: self.root / "finetune.pt")
    baselines = property(lambda self: self.root / "baselines.json")
    relax = property(lambda self: self.root / "network.relax.py")
    lowering = property(lambda self: self.root / "lowering.json")
    verify = property(lambda self: self.root / "verify.json")
    bench = property(lambda self: self.root / "bench.json")
    summary = property(lambda self: self.root / "summary.json")
    report = property(lambda self: self.root / "report.md")

    def library(self, model: str) -> Path:
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in model.split(":")[-1])
        return self.root / f"{stem or 'network'}.so"

    def manifest(self, model: str) -> Path:
        return self.library(model).with_suffix(".manifest.json")
