"""Which parallel settings a training config can run with, checked before any process starts."""

from __future__ import annotations

from typing import Any

from dsctl.errors import UserError


def parallel_config_problems(cfg: Any) -> list[str]:
    """Why `cfg` cannot run as asked on `cfg.nproc` processes (empty when it can)."""
    problems = []
    nproc, degree = cfg.nproc, getattr(cfg, "expert_parallel", 1)
    if nproc < 1:
        problems.append(f"nproc={nproc} must be at least 1")
    model = _model_config(cfg)
    if degree < 1:
        problems.append(f"expert_parallel={degree} must be at least 1")
    elif degree > 1:
        if cfg.pipeline != "none":
            problems.append(f"expert_parallel={degree} runs with data parallel only: set pipeline = \"none\" "
                            "or expert_parallel = 1")
        if nproc % degree:
            problems.append(f"nproc={nproc} must be a multiple of expert_parallel={degree} (every group of "
                            f"{degree} ranks holds all experts once): set nproc to {degree * max(1, nproc // degree)}")
        if model is not None and model.n_routed_experts % degree:
            problems.append(f"the model's {model.n_routed_experts} routed experts cannot be split evenly over "
                            f"expert_parallel={degree} ranks: pick a degree that divides {model.n_routed_experts}")
    if cfg.pipeline == "none":
        return problems
    if nproc < 2:
        problems.append(f"a pipeline needs nproc >= 2 (got {nproc}): raise nproc or set pipeline = \"none\"")
    if model is not None and model.num_hidden_layers < nproc:
        problems.append(f"{model.num_hidden_layers} decoder layers cannot fill {nproc} pipeline stages: lower nproc or "
                        f"set model_overrides = {{num_hidden_layers = {nproc}}}")
    if cfg.pipeline == "dualpipe" and nproc % 2:
        problems.append(f"DualPipe needs an even nproc (got {nproc})")
    if cfg.pipeline == "dualpipe" and (cfg.grad_accum % 2 or cfg.grad_accum < 2 * nproc):
        problems.append(f"DualPipe runs grad_accum micro-batches per step, which must be even and >= 2 × nproc "
                        f"= {2 * nproc}: set grad_accum (got {cfg.grad_accum})")
    return problems


def _model_config(cfg: Any):
    """The model a pretrain-like config builds (preset + overrides), or None if it names none."""
    if not hasattr(cfg, "model") or not hasattr(cfg, "model_overrides"):
        return None
    from dsctl.model import ModelConfig

    try:
        return ModelConfig.preset(cfg.model, **cfg.model_overrides)
    except (KeyError, TypeError, ValueError):
        return None  # the stage reports a bad preset or override itself, with its own message


def check_parallel_config(cfg: Any) -> None:
    problems = parallel_config_problems(cfg)
    if problems:
        mode = f"pipeline=\"{cfg.pipeline}\" " if cfg.pipeline != "none" else ""
        if getattr(cfg, "expert_parallel", 1) != 1:
            mode += f"expert_parallel={cfg.expert_parallel} "
        raise UserError(f"{mode}on {cfg.nproc} processes cannot run this config: " + "; ".join(problems))
