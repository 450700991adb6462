"""`mpqc pipeline`: the named, resumable steps from a PyTorch model to a verified .so."""
from mpqc.pipeline.config import PipelineConfig, Workspace
from mpqc.pipeline.runner import StepOutcome, run_steps, select
from mpqc.pipeline.steps import STEP_NAMES, STEPS

__all__ = ["PipelineConfig", "Workspace", "StepOutcome", "run_steps", "select", "STEPS",
           "STEP_NAMES", "preflight"]


def preflight(cfg: PipelineConfig) -> None:
    """Cheap checks of every name and number before an hour of work starts."""
    from mpqc.data import load_dataset
    from mpqc.errors import ConfigError
    from mpqc.models import build_model
    from mpqc.pipeline.steps import baseline_pairs, candidate_bits
    from mpqc.search.loop import METHODS
    from mpqc.targets import load_target

    target = load_target(cfg.target)
    budgets = ("budget_ms", "budget_ratio", "budget_ort_ratio")
    if sum(getattr(cfg, name) is not None for name in budgets) != 1:
        raise ConfigError("give exactly one of --budget-ms, --budget-ratio and "
                          "--budget-ort-ratio")
    if cfg.budget_ort_ratio is not None:
        from mpqc.targets import runs_on_host
        if cfg.rpc_tracker or not runs_on_host(target):
            raise ConfigError(f"--budget-ort-ratio compares with onnxruntime on this machine; "
                              f"target {target.name} does not run here: give --budget-ms "
                              "(milliseconds of the board) or --budget-ratio")
    for name in budgets:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} {value} must be positive")
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r} is not one of {', '.join(METHODS)}")
    if not cfg.lr > 0:
        raise ConfigError(f"--lr {cfg.lr} must be positive")
    for name in ("epochs", "finetune_epochs", "fp32_epochs", "fp32_finetune_epochs",
                 "random_shapes", "gamma_max"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    if cfg.repeats < 1 or cfg.threads < 1 or cfg.passes < 1:
        raise ConfigError("--repeats, --passes and --threads must be at least 1")
    candidate_bits(cfg)
    for a, w in baseline_pairs(cfg):
        from mpqc.schedules.spec import check_bits
        check_bits(a, w, "--baselines")
    build_model(cfg.model)
    load_dataset(cfg.data)
    if cfg.weights:
        from mpqc.models import load_weights
        load_weights(build_model(cfg.model), cfg.weights)
