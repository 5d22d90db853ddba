"""How a training step runs on several processes: data parallel and pipeline strategies.

Data parallel (`DataParallelStep`): every rank a full replica. Batches are a pure
function of the step, built for `grad_accum × world` micro-batches; rank r takes micro
indices `m × world + r`. Gradients are averaged by one flat all-reduce after the step's
micro-batches, so N ranks × grad_accum G equal one process with G × N. MoE load counts
are summed over ranks before the router-bias update, so every replica moves its biases
identically. (Not torch DDP: `compute_loss` runs the output head outside
`model.forward`, DDP's buffer broadcast would overwrite each rank's load counts, and an
expert no token picked would stall DDP's reducer.)

Pipeline (`PipelineStep`, "dualpipe": nproc even; "1f1b"): the model is cut with
`split_deepseek_v3`; a step is one `schedule.step` over `grad_accum` micro-batches of
`batch_size` rows, so it equals one process with the same grad_accum. Each rank
optimizes only its stage(s); the clip norm is global (each stage counted once). Before
validation and checkpoints the owners broadcast their stages' weights and AdamW moments,
so every rank holds the whole current model and rank 0 saves a normal checkpoint. Every
rank builds the full model (same seed), so the pipeline divides compute, not memory; MTP,
packed-document masks and fp8 are refused (dsctl.train.parallel_config), and the logged
loss is the LM loss: the MoE balance loss enters the gradients unmeasured.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dsctl.errors import UserError
from dsctl.parallel.data_parallel import all_reduce_grads
from dsctl.train.checkpoint import save_checkpoint
from dsctl.train.loop import LMTrainer, StepStrategy, Trainer


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
        all_reduce_grads(trainer.model)
        summed = _all_reduce_scalars([*totals.values(), tokens], trainer.device)
        return {k: v / self.world for k, v in zip(totals, summed)}, int(summed[-1])

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
