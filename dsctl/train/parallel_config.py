"""Which parallel settings a training config can run with, checked before any process starts."""

from __future__ import annotations

from typing import Any

from dsctl.errors import UserError


def parallel_config_problems(cfg: Any) -> list[str]:
    """Why `cfg` cannot run as asked on `cfg.nproc` processes (empty when it can)."""
    problems = []
    if cfg.nproc < 1:
        problems.append(f"nproc={cfg.nproc} must be at least 1")
    if cfg.pipeline == "none":
        return problems
    if cfg.nproc < 2:
        problems.append(f"a pipeline needs nproc >= 2 (got {cfg.nproc}): raise nproc or set pipeline = \"none\"")
    if cfg.pipeline == "dualpipe" and cfg.nproc % 2:
        problems.append(f"DualPipe needs an even nproc (got {cfg.nproc})")
    if cfg.pipeline == "dualpipe" and (cfg.grad_accum % 2 or cfg.grad_accum < 2 * cfg.nproc):
        problems.append(f"DualPipe runs grad_accum micro-batches per step, which must be even and >= 2 × nproc "
                        f"= {2 * cfg.nproc}: set grad_accum (got {cfg.grad_accum})")
    if getattr(cfg, "mtp_depth", 0):
        problems.append(f"MTP is not trained through the pipeline (mtp_depth={cfg.mtp_depth}): set mtp_depth = 0")
    if cfg.doc_masking:
        problems.append("packed-document masks are not sent between pipeline stages: set doc_masking = false")
    if cfg.precision == "fp8":
        problems.append("fp8 is not supported with a pipeline yet: use precision = \"auto\", \"fp32\" or \"bf16\"")
    return problems


def check_parallel_config(cfg: Any) -> None:
    problems = parallel_config_problems(cfg)
    if problems:
        what = f"pipeline=\"{cfg.pipeline}\" on {cfg.nproc} processes" if cfg.pipeline != "none" else f"nproc={cfg.nproc}"
        raise UserError(f"{what} cannot run this config: " + "; ".join(problems))
