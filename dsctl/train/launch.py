"""Start a training stage on several processes under torchrun, from the `dsctl` process.

    dsctl pretrain --from mini_r1:tokenize --nproc 4                         # data parallel
    dsctl pretrain --from mini_r1:tokenize --nproc 4 --set expert_parallel=2 # + expert parallel
    dsctl pretrain --from mini_r1:tokenize --nproc 4 --set pipeline=dualpipe \\
        --set grad_accum=8                                                   # DualPipe

`launch(ctx, prepare)` pickles the job (the stage, its config and inputs, and the stage's
``prepare(ctx, placement) -> TrainJob``, which travel by reference as pickle sends any
function) into the stage's scratch dir, runs ``python -m torch.distributed.run
--standalone --nproc-per-node N -m dsctl.train.worker JOB`` and returns the summary rank 0
wrote. Each worker (dsctl.train.worker) rebuilds the stage's context, calls ``prepare``
for model and batches (the code the single-process path runs) and trains with a
`StepStrategy` from dsctl.train.strategies. Rank 0 alone writes metrics; checkpoints and
the exported artifact are rank 0's (data parallel: laid out exactly as a single-process
run's) or every rank's own part (pipeline, expert parallel: a sharded HF directory).
Because ``-m dsctl.train.worker JOB`` is a plain torchrun entry point, a user can start
the same job with torchrun's own flags on several nodes (scratch and out on a shared
filesystem):

    # node 0: dsctl launches its share with these torchrun flags and publishes the artifact
    DSCTL_TORCHRUN_ARGS="--nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500" \\
        dsctl pretrain --from mini_r1:tokenize --nproc 16
    # node 1: the same flags, on the job node 0 printed (<scratch>/distributed-job.pkl)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500 \\
        -m dsctl.train.worker /shared/work/staging/<key>/scratch/distributed-job.pkl
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dsctl.errors import UserError
from dsctl.files import write_bytes_atomic
from dsctl.pipeline.stage import StageContext
from dsctl.train.parallel_config import check_parallel_config

if TYPE_CHECKING:
    from torch import nn

    from dsctl.train.loop import LMTrainer

JOB_NAME = "distributed-job.pkl"
SUMMARY_NAME = "distributed-summary.json"
ERRORS_DIR = "rank-errors"
TORCHRUN_ARGS_ENV = "DSCTL_TORCHRUN_ARGS"
"""torchrun flags that replace `--standalone --nproc-per-node <nproc>` (multi-node jobs)."""


@dataclass(frozen=True)
class Placement:
    """What one rank of a training run builds and which micro-batches it reads."""

    data_world: int = 1
    """Ranks that split each step's micro-batches: rank r reads micro ``m × data_world + r``."""
    parts: Callable[[Any], set[str] | None] | None = None
    """model config -> the model parts this rank builds (``build_model(config, parts)``); None: all."""

    def model_parts(self, model_config: Any) -> set[str] | None:
        return self.parts(model_config) if self.parts is not None else None


@dataclass
class TrainJob:
    """What a stage's ``prepare(ctx, placement)`` hands the training loop."""

    model: nn.Module
    """The model (or this rank's parts of it) built for one device, same seed on every rank."""
    batches: Any
    """Training BatchSource; data parallel ranks read micro index ``m × world + rank``."""
    val_batches: Any
    """Validation BatchSource (or None)."""
    finish: Callable[[LMTrainer, dict[str, Any]], dict[str, Any]]
    """Every rank, after training: export the artifact into ctx.out through
    ``trainer.strategy.export`` (rank 0 writes what is not sharded), return the summary."""


Prepare = Callable[..., TrainJob]
"""A stage's ``prepare(ctx, placement: Placement | None = None) -> TrainJob``: a module-level function."""


def write_job(ctx: StageContext, prepare: Prepare) -> Path:
    """What a torchrun worker rebuilds the stage's context from: the stage spec, config and
    `prepare` pickle by reference (module and name), the rest by value."""
    job = {"stage": ctx.spec, "prepare": prepare, "config": ctx.config, "seed": ctx.seed, "inputs": ctx.inputs,
           "out": ctx.out, "scratch": ctx.scratch, "label": ctx.label, "key": ctx.key, "quiet": ctx.reporter.quiet}
    path = ctx.scratch / JOB_NAME
    write_bytes_atomic(path, pickle.dumps(job))
    return path


def launch(ctx: StageContext, prepare: Prepare) -> dict[str, Any]:
    """Train `ctx`'s stage on `ctx.config.nproc` local processes; returns rank 0's summary."""
    cfg = ctx.config
    check_parallel_config(cfg)
    job = write_job(ctx, prepare)
    shutil.rmtree(ctx.scratch / ERRORS_DIR, ignore_errors=True)
    (ctx.scratch / SUMMARY_NAME).unlink(missing_ok=True)
    torchrun_args = shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, "")) or [
        "--standalone", "--nproc-per-node", str(cfg.nproc)]
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "dsctl.train.worker", str(job)]
    mode = "data parallel" if cfg.pipeline == "none" else cfg.pipeline
    ctx.info(f"torchrun {' '.join(torchrun_args)}: {cfg.nproc} processes in all, {mode}; job {job}")
    returncode, tail = _run_streaming(cmd, echo=not ctx.reporter.quiet)
    if returncode != 0:
        _raise_rank_failure(ctx.scratch / ERRORS_DIR, returncode, tail)
    return json.loads((ctx.scratch / SUMMARY_NAME).read_text())


def _run_streaming(cmd: list[str], echo: bool) -> tuple[int, str]:
    """Run `cmd`, copying its output to our stderr as it comes; returns (status, last lines)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=_die_with_parent)
    try:
        for line in proc.stdout:
            tail.append(line)
            if echo:
                sys.stderr.write(line)
        return proc.wait(), "".join(tail)
    finally:
        if proc.poll() is None:  # we are being interrupted: torchrun stops its workers on SIGTERM
            proc.terminate()
            proc.wait()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, so a killed `dsctl` (or a
    killed torchrun, for workers) never leaves ranks writing into the scratch dir."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned job finishes its step and exits on the broken rendezvous


def _raise_rank_failure(errors: Path, returncode: int, tail: str) -> None:
    reports = sorted(errors.glob("rank*.json"), key=lambda f: f.stat().st_mtime) if errors.is_dir() else []
    if not reports:
        raise RuntimeError(f"torchrun exited with status {returncode} before any rank reported an error; "
                           f"last output:\n{tail}")
    first = json.loads(reports[0].read_text())
    where = f"rank {first['rank']}"
    if first["type"] == "UserError":
        raise UserError(f"{where}: {first['message']}")
    raise RuntimeError(f"{where} failed first: {first['type']}: {first['message']}\n{first['traceback']}")
