"""The torchrun entry point of a multi-process training stage (see dsctl.train.launch).

    torchrun --nproc-per-node 4 -m dsctl.train.worker <scratch>/distributed-job.pkl

Each rank rebuilds the stage's context from the job `launch` pickled, calls the stage's
``prepare(ctx, placement)`` for model (or its part of it) and batches, and trains with
the strategy the config names. Rank 0 alone reports and writes metrics; checkpoints and
the exported artifact are rank 0's (data parallel) or every rank's own part (pipeline,
expert parallel); a rank that fails records why under ``rank-errors/`` for the
launcher to report.
"""

from __future__ import annotations

import os
import pickle
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dsctl.errors import UserError
from dsctl.files import write_json_atomic
from dsctl.pipeline.stage import StageContext
from dsctl.progress import Reporter
from dsctl.train.launch import ERRORS_DIR, SUMMARY_NAME, Placement, _die_with_parent
from dsctl.train.loop import LMTrainer
from dsctl.train.parallel_config import check_parallel_config
from dsctl.train.strategies import DataParallelStep, ExpertParallelStep, PipelineStep


class _RankContext(StageContext):
    """The stage context of one rank: rank 0 reports and writes metrics, the others stay quiet."""

    def __init__(self, *args: Any, rank: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank
        if rank:  # the loop trims/unlinks this on resume; keep other ranks off rank 0's file
            self.metrics_path = self.scratch / f"metrics.rank{rank}.unused"

    def log(self, **metrics: Any) -> None:
        if self.rank == 0:
            super().log(**metrics)

    def info(self, message: str) -> None:
        if self.rank == 0:
            super().info(message)

    def warn(self, message: str) -> None:
        if self.rank == 0:
            super().warn(message)


def context_from_job(job: dict[str, Any], rank: int) -> StageContext:
    reporter = Reporter(quiet=job["quiet"] or rank != 0)
    return _RankContext(job["stage"], job["config"], job["seed"], job["inputs"], job["out"], job["scratch"], reporter,
                        job["label"], job["key"], rank=rank)


def train_rank(job: dict[str, Any], world: int, rank: int) -> dict[str, Any] | None:
    """This rank's share of the job; rank 0 exports the artifact and returns the summary."""
    ctx = context_from_job(job, rank)
    cfg = ctx.config
    check_parallel_config(cfg)
    if world != cfg.nproc:
        raise UserError(f"torchrun started {world} processes in all but the stage's nproc = {cfg.nproc}; "
                        "set nproc to the total over all nodes (nnodes × nproc-per-node)")
    strategy = strategy_for(cfg, world, rank)
    if isinstance(strategy, PipelineStep):
        placement = Placement(parts=strategy.model_parts)
    else:
        placement = Placement(data_world=world)
    work = job["prepare"](ctx, placement)
    trainer = LMTrainer(work.model, work.batches, cfg, ctx, val_batches=work.val_batches, strategy=strategy)
    summary = trainer.fit()
    summary.update(nproc=world, pipeline=cfg.pipeline, expert_parallel=getattr(cfg, "expert_parallel", 1),
                   **rank_metrics(trainer))
    summary = work.finish(trainer, summary)  # every rank: the export may be sharded
    ctx.close()  # rank 0's TensorBoard writer (each record is already flushed: a failing rank loses none)
    if rank == 0:
        write_json_atomic(ctx.scratch / SUMMARY_NAME, summary)
    dist.barrier()
    return summary if rank == 0 else None


def strategy_for(cfg: Any, world: int, rank: int) -> DataParallelStep | PipelineStep:
    if cfg.pipeline != "none":
        return PipelineStep(cfg.pipeline, world, rank)
    degree = getattr(cfg, "expert_parallel", 1)
    return ExpertParallelStep(world, rank, degree) if degree > 1 else DataParallelStep(world, rank)


def rank_metrics(trainer: LMTrainer) -> dict[str, list[Any]]:
    """What each rank held and waited: parameters, peak resident memory, pipeline idle time."""
    params = sum(p.numel() for p in trainer.model.parameters())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    idle = getattr(trainer.strategy, "idle_s", None)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (params, round(peak_mb, 1), idle))
    metrics: dict[str, list[Any]] = {"params_per_rank": [g[0] for g in gathered],
                                     "peak_rss_mb_per_rank": [g[1] for g in gathered]}
    if idle is not None:
        metrics["idle_s_per_rank"] = [round(g[2], 3) for g in gathered]
    return metrics


def _record_failure(scratch: Path, rank: int, exc: BaseException) -> None:
    errors = scratch / ERRORS_DIR
    errors.mkdir(parents=True, exist_ok=True)
    write_json_atomic(errors / f"rank{rank}.json", {"rank": rank, "type": type(exc).__name__, "message": str(exc),
                                                    "traceback": traceback.format_exc()})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: torchrun [torchrun options] -m dsctl.train.worker JOB.pkl")
    _die_with_parent()
    job = pickle.loads(Path(args[0]).read_bytes())
    rank = int(os.environ.get("RANK", "0"))
    from dsctl.parallel.dist import distributed

    try:
        backend = "gloo" if job["config"].device == "cpu" else None
        with distributed(backend) as info:
            if info.world_size < 2:
                raise UserError("the distributed worker needs at least 2 processes; start it with torchrun "
                                "--nproc-per-node N (N >= 2)")
            train_rank(job, info.world_size, info.rank)
    except BaseException as exc:
        _record_failure(job["scratch"], rank, exc)
        raise


if __name__ == "__main__":
    main()
