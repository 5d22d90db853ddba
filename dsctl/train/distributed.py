"""Train one stage on several processes: data parallel, DualPipe or 1F1B, under torchrun.

    dsctl pretrain --from mini_r1:tokenize --nproc 4                         # data parallel
    dsctl pretrain --from mini_r1:tokenize --nproc 4 --set pipeline=dualpipe \\
        --set mtp_depth=0 --set doc_masking=false --set grad_accum=8         # DualPipe

`launch(ctx, prepare)` (in the `dsctl` process) writes a JSON job spec into the stage's
scratch dir, runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m
dsctl.train.distributed SPEC`` and returns the summary rank 0 wrote. Each worker
rebuilds the stage's context from the spec, calls the stage's ``prepare(ctx,
data_world)`` for model and batches (the same code the single-process path runs), and
runs the ordinary `Trainer` with a `StepStrategy` that says how a step computes its
loss and gradients. Rank 0 alone writes metrics, checkpoints and the exported artifact,
so the artifact is laid out exactly as a single-process run's. Because ``-m
dsctl.train.distributed SPEC`` is a plain torchrun entry point, a user can start the same
spec with torchrun's own flags on several nodes (scratch and out on a shared filesystem):

    # node 0: dsctl launches its share with these torchrun flags and publishes the artifact
    DSCTL_TORCHRUN_ARGS="--nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500" \
        dsctl pretrain --from mini_r1:tokenize --nproc 16
    # node 1: the same flags, on the job spec node 0 printed (<scratch>/distributed-job.json)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500 \
        -m dsctl.train.distributed /shared/work/staging/<key>/scratch/distributed-job.json

Data parallel (``pipeline="none"``): every rank holds the whole model. Batches are a pure
function of the step, built for ``grad_accum × world`` micro-batches; rank r takes micro
indices ``m × world + r``. Gradients are averaged by one flat all-reduce after the
step's micro-batches, so N ranks × grad_accum G equal one process with G × N. MoE
load counts are summed over ranks before the router-bias update, so every replica moves
its biases identically. (Not torch DDP: `compute_loss` runs the output head outside
``model.forward``, DDP's buffer broadcast would overwrite each rank's load counts, and an
expert no token picked would stall DDP's reducer.)

Pipeline (``"dualpipe"``: nproc even; ``"1f1b"``): the model is cut with
`split_deepseek_v3`; a step is one ``schedule.step`` over ``grad_accum`` micro-batches of
``batch_size`` rows, so it equals one process with the same grad_accum. Each rank
optimizes only its stage(s); the clip norm is global (each stage counted once). Before
validation and checkpoints the owners broadcast their stages' weights and AdamW moments,
so every rank holds the whole current model and rank 0 saves a normal checkpoint.
Not supported on the pipeline path (refused with a UserError, never ignored): MTP
(``mtp_depth`` must be 0), packed-document masks (``doc_masking = false``), ``fp8``. Every
rank builds the full model (same seed), so the pipeline divides compute, not memory.
The logged loss is the LM loss; the MoE balance loss enters the gradients unmeasured.
"""

from __future__ import annotations

import collections
import importlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from dsctl.errors import UserError
from dsctl.stage import Artifact, StageContext, write_json_atomic
from dsctl.train.checkpoint import save_checkpoint
from dsctl.train.loop import LMTrainer, StepStrategy, Trainer

SPEC_NAME = "distributed-job.json"
SUMMARY_NAME = "distributed-summary.json"
ERRORS_DIR = "rank-errors"
TORCHRUN_ARGS_ENV = "DSCTL_TORCHRUN_ARGS"
"""torchrun flags that replace `--standalone --nproc-per-node <nproc>` (multi-node jobs)."""


@dataclass
class TrainJob:
    """What a stage's ``prepare(ctx, data_world)`` hands the training loop."""

    model: nn.Module
    """The model built for one device (same seed on every rank)."""
    batches: Any
    """Training BatchSource; data parallel ranks read micro index ``m × world + rank``."""
    val_batches: Any
    """Validation BatchSource (or None)."""
    finish: Callable[[Trainer, dict[str, Any]], dict[str, Any]]
    """Rank 0, after training: export the artifact into ctx.out, return the final summary."""


# -- configuration checks -------------------------------------------------------------------
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


# -- the launcher (runs in the dsctl process) -------------------------------------------------
def write_job_spec(ctx: StageContext, prepare: str) -> Path:
    """The JSON a torchrun worker rebuilds the stage's context from."""
    from dsctl.configs import config_to_dict

    spec = {
        "stage_module": ctx.spec.run.__module__, "stage": ctx.spec.name, "prepare": prepare,
        "config": config_to_dict(ctx.config), "seed": ctx.seed,
        "inputs": {slot: [{"path": str(a.path), "key": a.key, "kind": a.kind, "label": a.label} for a in arts]
                   for slot, arts in ctx.inputs.items()},
        "out": str(ctx.out), "scratch": str(ctx.scratch), "label": ctx.label, "key": ctx.key,
        "quiet": ctx.reporter.quiet,
    }
    path = ctx.scratch / SPEC_NAME
    write_json_atomic(path, spec)
    return path


def launch(ctx: StageContext, prepare: str) -> dict[str, Any]:
    """Train `ctx`'s stage on `ctx.config.nproc` local processes; returns rank 0's summary.

    `prepare` names the stage's ``prepare(ctx, data_world) -> TrainJob`` as "module:function".
    """
    cfg = ctx.config
    check_parallel_config(cfg)
    spec = write_job_spec(ctx, prepare)
    shutil.rmtree(ctx.scratch / ERRORS_DIR, ignore_errors=True)
    (ctx.scratch / SUMMARY_NAME).unlink(missing_ok=True)
    torchrun_args = shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, "")) or [
        "--standalone", "--nproc-per-node", str(cfg.nproc)]
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "dsctl.train.distributed", str(spec)]
    mode = "data parallel" if cfg.pipeline == "none" else cfg.pipeline
    ctx.info(f"torchrun {' '.join(torchrun_args)}: {cfg.nproc} processes in all, {mode}; job spec {spec}")
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


# -- strategies -------------------------------------------------------------------------------
def all_reduce_router_load(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Sum every MoE layer's expert-load counts over `group` (one all-reduce)."""
    moes = model.moe_layers() if hasattr(model, "moe_layers") else []
    if not moes:
        return
    flat = torch.cat([m.expert_load for m in moes])
    dist.all_reduce(flat, group=group)
    for m, load in zip(moes, flat.split([m.expert_load.numel() for m in moes])):
        m.expert_load.copy_(load)


def _all_reduce_scalars(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class DataParallelStep(StepStrategy):
    """Every rank a full replica; rank r runs micro-batches r, r + world, ...; gradients averaged."""

    def __init__(self, world: int, rank: int) -> None:
        self.world, self.rank = world, rank

    def forward_backward(self, trainer: Trainer, step: int) -> tuple[dict[str, float], int]:
        micros = [m * self.world + self.rank for m in range(trainer.cfg.grad_accum)]
        totals, tokens = self.run_micro_batches(trainer, step, micros)
        self._average_grads(trainer.model)
        summed = _all_reduce_scalars([*totals.values(), tokens], trainer.device)
        return {k: v / self.world for k, v in zip(totals, summed)}, int(summed[-1])

    def _average_grads(self, model: nn.Module) -> None:
        """Mean of the gradients over ranks; a parameter no rank touched keeps grad None,
        as it would in one process (so AdamW skips it there too)."""
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device
        touched = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        dist.all_reduce(touched, op=dist.ReduceOp.MAX)
        live = [p for p, t in zip(params, touched.tolist()) if t]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in live])
        dist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(live, flat.split([p.numel() for p in live])):
            p.grad.copy_(g.view_as(p))

    def sync_router_load(self, model: nn.Module) -> None:
        all_reduce_router_load(model)

    def save_checkpoint(self, trainer: Trainer) -> None:
        if self.rank == 0:
            save_checkpoint(trainer.ckpt_dir, trainer.model, trainer.optimizer, trainer.state)
        dist.barrier()  # no rank may roll back or exit before the checkpoint is complete


class PipelineStep(StepStrategy):
    """A DualPipe or 1F1B step over this rank's stage(s) of the model."""

    def __init__(self, schedule: str, world: int, rank: int) -> None:
        if schedule not in ("dualpipe", "1f1b"):
            raise ValueError(f"unknown pipeline schedule {schedule!r}")
        self.schedule, self.world, self.rank = schedule, world, rank

    def bind(self, trainer: Trainer) -> None:
        from dsctl.parallel.dualpipe import DualPipe
        from dsctl.parallel.model_stages import lm_loss, split_deepseek_v3
        from dsctl.parallel.onef1b import OneF1B

        # Stage s is run (and, for DualPipe, mirrored) elsewhere too, but rank s owns it:
        # its norm term, its broadcast before checkpoints.
        try:
            self.stages = split_deepseek_v3(trainer.model, self.world)
        except ValueError as exc:  # too few layers for the ranks: the user picks the fix
            raise UserError(f"{exc} (e.g. model_overrides = {{num_hidden_layers = {self.world}}})") from None
        self.owned = self.stages[self.rank]
        if self.schedule == "dualpipe":
            self.chunks: tuple[nn.Module, ...] = (self.owned, self.stages[self.world - 1 - self.rank])
            self.pipe: Any = DualPipe(self.chunks, lm_loss)
            self.loss_rank = 0  # DualPipe returns the loss on ranks 0 and P-1; count it once
        else:
            self.chunks = (self.owned,)
            self.pipe = OneF1B(self.owned, lm_loss)
            self.loss_rank = self.world - 1

    def forward_backward(self, trainer: Trainer, step: int) -> tuple[dict[str, float], int]:
        micros = [trainer.batches.batch(step, m) for m in range(trainer.cfg.grad_accum)]
        inputs = torch.cat([b["input_ids"] for b in micros]).to(trainer.device)
        labels = torch.cat([b["labels"] for b in micros]).to(trainer.device)
        with trainer.autocast():
            loss = self.pipe.step(inputs, labels, len(micros))
        mine = float(loss) if self.rank == self.loss_rank else 0.0
        (value,) = _all_reduce_scalars([mine], trainer.device)
        return {"loss": value, "lm_loss": value, "mtp_loss": 0.0, "balance_loss": 0.0}, int(inputs.numel())

    def clip_grad_norm(self, trainer: Trainer, max_norm: float) -> float:
        """Global norm over the whole model (each stage counted once, by its owner), then
        the same clip factor as torch.nn.utils.clip_grad_norm_ on every local gradient."""
        grads = [p.grad for p in self.owned.parameters() if p.grad is not None]
        square = torch.stack([g.detach().float().norm() ** 2 for g in grads]).sum() if grads else 0.0
        (total,) = _all_reduce_scalars([float(square)], trainer.device)
        norm = math.sqrt(total)
        scale = min(1.0, max_norm / (norm + 1e-6))
        for chunk in self.chunks:
            for p in chunk.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return norm

    def sync_router_load(self, model: nn.Module) -> None:
        # A layer's tokens were counted on the ranks that ran it (both DualPipe mirrors);
        # the rest count zero, so a world sum is the step's load.
        all_reduce_router_load(model)

    @torch.no_grad()
    def sync_model(self, trainer: Trainer) -> None:
        """Broadcast each stage's weights and AdamW moments from its owner to every rank."""
        optimizer = trainer.optimizer
        for owner, stage in enumerate(self.stages):
            for p in stage.parameters():
                state = optimizer.state[p]
                if not state:  # never stepped here: zero moments are exactly AdamW's fresh state
                    state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                for tensor in (p.data, state["exp_avg"], state["exp_avg_sq"]):
                    dist.broadcast(tensor, src=owner)
                step = state["step"].to(p.device)
                dist.broadcast(step, src=owner)
                state["step"].copy_(step)

    def save_checkpoint(self, trainer: Trainer) -> None:
        if self.rank == 0:
            save_checkpoint(trainer.ckpt_dir, trainer.model, trainer.optimizer, trainer.state)
        dist.barrier()


# -- the worker (runs under torchrun) ---------------------------------------------------------
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


def _import(name: str) -> Any:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def context_from_spec(spec: dict[str, Any], rank: int) -> StageContext:
    from dsctl.configs import build_config
    from dsctl.progress import Reporter

    module = importlib.import_module(spec["stage_module"])
    stages = [getattr(module, "STAGE", None), *getattr(module, "STAGES", [])]
    stage = next((s for s in stages if s is not None and s.name == spec["stage"]), None)
    if stage is None:
        raise UserError(f"job spec names stage {spec['stage']!r}, which {spec['stage_module']} does not define")
    config = build_config(stage.config, spec["config"], "the distributed job spec")
    inputs = {slot: [Artifact(Path(a["path"]), a["key"], a["kind"], {}, a["label"]) for a in arts]
              for slot, arts in spec["inputs"].items()}
    reporter = Reporter(quiet=spec.get("quiet", False) or rank != 0)
    return _RankContext(stage, config, spec["seed"], inputs, Path(spec["out"]), Path(spec["scratch"]), reporter,
                        spec["label"], spec["key"], rank=rank)


def train_rank(spec: dict[str, Any], world: int, rank: int) -> dict[str, Any] | None:
    """This rank's share of the job; rank 0 exports the artifact and returns the summary."""
    ctx = context_from_spec(spec, rank)
    cfg = ctx.config
    check_parallel_config(cfg)
    if world != cfg.nproc:
        raise UserError(f"torchrun started {world} processes in all but the stage's nproc = {cfg.nproc}; "
                        "set nproc to the total over all nodes (nnodes × nproc-per-node)")
    prepare = _import(spec["prepare"])
    if cfg.pipeline == "none":
        job, strategy = prepare(ctx, data_world=world), DataParallelStep(world, rank)
    else:
        job, strategy = prepare(ctx), PipelineStep(cfg.pipeline, world, rank)
    trainer = LMTrainer(job.model, job.batches, cfg, ctx, val_batches=job.val_batches, strategy=strategy)
    summary = trainer.fit()
    summary.update(nproc=world, pipeline=cfg.pipeline)
    if rank == 0:
        summary = job.finish(trainer, summary)
        write_json_atomic(ctx.scratch / SUMMARY_NAME, summary)
    dist.barrier()
    return summary if rank == 0 else None


def _record_failure(spec: dict[str, Any], rank: int, exc: BaseException) -> None:
    errors = Path(spec["scratch"]) / ERRORS_DIR
    errors.mkdir(parents=True, exist_ok=True)
    write_json_atomic(errors / f"rank{rank}.json", {"rank": rank, "type": type(exc).__name__, "message": str(exc),
                                                    "traceback": traceback.format_exc()})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: torchrun [torchrun options] -m dsctl.train.distributed JOB_SPEC.json")
    _die_with_parent()
    spec = json.loads(Path(args[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    from dsctl.parallel.dist import distributed

    try:
        backend = "gloo" if spec["config"].get("device") == "cpu" else None
        with distributed(backend) as info:
            if info.world_size < 2:
                raise UserError("the distributed worker needs at least 2 processes; start it with torchrun "
                                "--nproc-per-node N (N >= 2)")
            train_rank(spec, info.world_size, info.rank)
    except BaseException as exc:
        _record_failure(spec, rank, exc)
        raise


if __name__ == "__main__":
    main()
