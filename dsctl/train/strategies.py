"""How a training step runs on several processes: data parallel, expert parallel, pipelines.

Data parallel (`DataParallelStep`): every rank a full replica. Batches are a pure
function of the step, built for `grad_accum × world` micro-batches; rank r takes micro
indices `m × world + r`. Gradients are averaged by one flat all-reduce after the step's
micro-batches, so N ranks × grad_accum G equal one process with G × N. MoE load counts
are summed over ranks before the router-bias update, so every replica moves its biases
identically. (Not torch DDP: `compute_loss` runs the output head outside
`model.forward`, DDP's buffer broadcast would overwrite each rank's load counts, and an
expert no token picked would stall DDP's reducer.)

Expert parallel (`ExpertParallelStep`, `expert_parallel = E`): data parallel as above,
but the routed experts of every MoE layer are sharded over consecutive groups of E ranks
(dsctl.parallel.expert_parallel: tokens reach their expert's rank by all-to-all). A rank
holds 1/E of the experts; dense gradients are averaged over all ranks, and each expert's
gradient is summed over the N/E ranks holding a copy of it and divided by N, so the step
again equals one process with G × N micro-batches.

Pipeline (`PipelineStep`, "dualpipe": nproc even; "1f1b"): the model is cut with
`split_deepseek_v3`, and each rank *builds* only its stage (1F1B) or its two mirrored
stages (DualPipe), so parameters, gradients and AdamW state per rank are about 1/P (2/P)
of the model's, plus the embedding and head on the end ranks. A step is one
`schedule.step` over `grad_accum` micro-batches of `batch_size` rows: it equals one
process with the same grad_accum, MTP, packed-document masks and fp8 included (each rank
builds what a stage needs besides the hidden state from the batch itself). The clip norm
is global (each parameter counted once, by the rank that owns its stage); validation runs
the stages as a forward chain; checkpoints are written by every rank for its own part
(dsctl.train.checkpoint.Shard) and the exported artifact is a sharded HF checkpoint, so
no rank ever holds the whole model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dsctl.errors import UserError
from dsctl.parallel.data_parallel import all_reduce_grads, reduce_param_grads
from dsctl.parallel.pipeline import recv_tensor, send_tensor
from dsctl.train.checkpoint import Shard, latest_checkpoint, load_checkpoint, save_checkpoint
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
        self.reduce_grads(trainer.model)
        summed = _all_reduce_scalars([*totals.values(), tokens], trainer.device)
        return {k: v / self.world for k, v in zip(totals, summed)}, int(summed[-1])

    def reduce_grads(self, model: nn.Module) -> None:
        all_reduce_grads(model)

    def sync_router_load(self, model: nn.Module) -> None:
        all_reduce_router_load(model)

    def save_checkpoint(self, trainer: Trainer) -> None:
        if self.rank == 0:
            save_checkpoint(trainer.ckpt_dir, trainer.model, trainer.optimizer, trainer.state)
        dist.barrier()  # no rank may roll back or exit before the checkpoint is complete

    def export(self, trainer: Trainer, out: Path, tokenizer_from: Path | None) -> None:
        if self.rank == 0:
            super().export(trainer, out, tokenizer_from)
        dist.barrier()


class _ShardedCheckpoints:
    """Checkpoints for strategies whose ranks hold different parts of the model: every
    rank writes and reads its own files (dsctl.train.checkpoint.Shard)."""

    rank: int
    world: int

    def save_checkpoint(self, trainer: Trainer) -> None:
        save_checkpoint(trainer.ckpt_dir, trainer.model, trainer.optimizer, trainer.state, self._shard())

    def load_checkpoint(self, trainer: Trainer, path: Path) -> dict[str, Any]:
        return load_checkpoint(path, trainer.model, trainer.optimizer, self._shard())

    def _shard(self) -> Shard:
        return Shard(self.rank, self.world, dist.barrier)


class ExpertParallelStep(_ShardedCheckpoints, DataParallelStep):
    """Data parallel with the routed experts sharded over groups of `degree` ranks."""

    def __init__(self, world: int, rank: int, degree: int) -> None:
        super().__init__(world, rank)
        self.degree = degree

    def bind(self, trainer: Trainer) -> None:
        from dsctl.parallel.expert_parallel import apply_expert_parallel

        # Every rank takes part in creating every group, in the same order.
        groups = [dist.new_group(list(range(g, g + self.degree))) for g in range(0, self.world, self.degree)]
        copies = [dist.new_group(list(range(j, self.world, self.degree))) for j in range(self.degree)]
        self.expert_group = groups[self.rank // self.degree]
        self.copies_group = copies[self.rank % self.degree]
        self.shard = self.rank % self.degree
        apply_expert_parallel(trainer.model, self.expert_group)
        # The optimizer was built over the whole model; rebuild it over what this rank holds.
        from dsctl.train.optim import build_optimizer

        trainer.optimizer = build_optimizer(trainer.model, trainer.cfg)
        expert_ids = {id(p) for m in trainer.model.moe_layers() for p in m.experts.parameters()}
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.expert_params = [p for p in params if id(p) in expert_ids]
        self.dense_params = [p for p in params if id(p) not in expert_ids]

    def reduce_grads(self, model: nn.Module) -> None:
        reduce_param_grads(self.dense_params)
        # An expert's gradient already holds the tokens of its whole expert group (the
        # all-to-all's backward); its copies in the other groups hold the rest.
        reduce_param_grads(self.expert_params, self.copies_group, divisor=self.world)

    def clip_grad_norm(self, trainer: Trainer, max_norm: float) -> float:
        """Global norm: dense parameters once (rank 0's, equal everywhere), each expert once
        (by the first expert group), then one clip factor for every local gradient."""
        def squares(params: list[nn.Parameter]) -> float:
            return sum(float(p.grad.detach().float().norm() ** 2) for p in params if p.grad is not None)

        mine = (squares(self.dense_params) if self.rank == 0 else 0.0)
        mine += squares(self.expert_params) if self.rank < self.degree else 0.0
        (total,) = _all_reduce_scalars([mine], trainer.device)
        return _clip_to(math.sqrt(total), max_norm, self.dense_params + self.expert_params)

    def export(self, trainer: Trainer, out: Path, tokenizer_from: Path | None) -> None:
        """A sharded HF checkpoint: rank 0 the dense weights and its experts, ranks 1..E-1
        their experts, renumbered globally."""
        from dsctl.model.hf import save_hf_shard

        model, mine = trainer.model, None
        if self.rank < self.degree:
            first = self.shard * model.config.n_routed_experts // self.degree
            state, experts = _global_expert_names(model.state_dict(), first)
            mine = save_hf_shard(model, out, self.rank, self.degree, state=state,
                                 keep=lambda name: self.rank == 0 or name in experts)
        _write_sharded_export(self.rank, mine, trainer, out, tokenizer_from)


def _global_expert_names(state: dict[str, torch.Tensor], first: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """An expert-sharded state dict with local experts 0..L-1 renamed first..first+L-1;
    also returns the expert names."""
    out, experts = {}, set()
    for name, t in state.items():
        head, sep, rest = name.partition(".mlp.experts.")
        if sep:
            index, tail = rest.split(".", 1)
            name = f"{head}.mlp.experts.{first + int(index)}.{tail}"
            experts.add(name)
        out[name] = t
    return out, experts


class PipelineStep(_ShardedCheckpoints, StepStrategy):
    """A DualPipe or 1F1B step over the stage(s) this rank built."""

    def __init__(self, schedule: str, world: int, rank: int) -> None:
        if schedule not in ("dualpipe", "1f1b"):
            raise ValueError(f"unknown pipeline schedule {schedule!r}")
        self.schedule, self.world, self.rank = schedule, world, rank
        self.idle_s = 0.0
        """Seconds this rank waited on its neighbours, over all steps of this process."""

    @property
    def stage_indices(self) -> list[int]:
        """The stages this rank runs: its own, and under DualPipe the mirror's."""
        mirror = self.world - 1 - self.rank
        return [self.rank, mirror] if self.schedule == "dualpipe" and mirror != self.rank else [self.rank]

    def model_parts(self, model_config: Any) -> set[str]:
        """What `build_model(config, parts)` builds on this rank."""
        from dsctl.parallel.pipeline_stages import stage_parts

        try:
            return stage_parts(model_config, self.world, self.stage_indices)
        except ValueError as exc:  # too few layers for the ranks: the user picks the fix
            raise UserError(f"{exc} (e.g. model_overrides = {{num_hidden_layers = {self.world}}})") from None

    def bind(self, trainer: Trainer) -> None:
        from dsctl.parallel.dualpipe import DualPipe
        from dsctl.parallel.onef1b import OneF1B
        from dsctl.parallel.pipeline_stages import split_deepseek_v3, stage_of_parameter, tied_parameter_names

        model, config = trainer.model, trainer.model.config
        self.chunks = tuple(split_deepseek_v3(model, self.world, self.stage_indices))
        if self.schedule == "dualpipe":
            self.pipe: Any = DualPipe((self.chunks[0], self.chunks[-1]), None)
        else:
            self.pipe = OneF1B(self.chunks[0], None)
        named = dict(model.named_parameters())
        self.owned = [p for n, p in named.items() if stage_of_parameter(n, config, self.world) == self.rank]
        self.owned_names = {n for n in model.state_dict()  # with buffers: router biases are saved too
                            if stage_of_parameter(n, config, self.world) == self.rank}
        # 1F1B: the last stage's embedding copy (for MTP) and stage 0's sum their gradients.
        # Under DualPipe the end ranks hold both stages, so one embedding serves both there.
        self.tied: list[nn.Parameter] = []
        if self.schedule == "1f1b" and tied_parameter_names(config, self.world):
            ends = dist.new_group([0, self.world - 1])
            if self.rank in (0, self.world - 1):
                self.tied_group = ends
                self.tied = [named[n] for n in tied_parameter_names(config, self.world)]

    def forward_backward(self, trainer: Trainer, step: int) -> tuple[dict[str, float], int]:
        from dsctl.parallel.pipeline_stages import stage_kwargs

        micros = [trainer.batches.batch(step, m) for m in range(trainer.cfg.grad_accum)]
        inputs = torch.cat([b["input_ids"] for b in micros]).to(trainer.device)
        labels = torch.cat([b["labels"] for b in micros]).to(trainer.device)
        doc_ids = None
        if trainer.cfg.doc_masking and "doc_ids" in micros[0]:
            doc_ids = torch.cat([b["doc_ids"] for b in micros]).to(trainer.device)
        for chunk in self.chunks:
            chunk.reset_stats()
        with trainer.autocast():
            self.pipe.step(inputs, None, len(micros), stage_kwargs(inputs, labels, doc_ids, len(micros)))
        self.idle_s += self.pipe.idle_s
        for p in self.tied:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=self.tied_group)
        keys = ("lm_loss", "mtp_loss", "balance_loss")
        local = [sum(chunk.stats[k] for chunk in self.chunks) for k in keys]
        sums = _all_reduce_scalars(local, trainer.device)
        losses = {k: v / len(micros) for k, v in zip(keys, sums)}
        losses["loss"] = losses["lm_loss"] + self.chunks[-1].mtp_weight * losses["mtp_loss"] + losses["balance_loss"]
        return {k: losses[k] for k in ("loss", *keys)}, int(inputs.numel())

    def clip_grad_norm(self, trainer: Trainer, max_norm: float) -> float:
        """Global norm over the whole model (each parameter counted once, by the rank that
        owns its stage), then the same clip factor on every local gradient."""
        square = sum(float(p.grad.detach().float().norm() ** 2) for p in self.owned if p.grad is not None)
        (total,) = _all_reduce_scalars([square], trainer.device)
        return _clip_to(math.sqrt(total), max_norm, list(trainer.model.parameters()))

    def sync_router_load(self, model: nn.Module) -> None:
        """A layer's tokens were counted on the ranks that ran it: one rank under 1F1B, a
        rank and its mirror under DualPipe (which hold the same layers, in the same order)."""
        if self.schedule != "dualpipe" or self.world - 1 - self.rank == self.rank:
            return
        moes = model.moe_layers()
        if not moes:
            return
        mine = torch.cat([m.expert_load for m in moes])
        (theirs,) = self.pipe.exchange([mine], self.world - 1 - self.rank)
        for m, load in zip(moes, (mine + theirs).split([m.expert_load.numel() for m in moes])):
            m.expert_load.copy_(load)

    def validation_loss(self, trainer: LMTrainer) -> float:
        stage = self.chunks[0]
        stage.reset_stats()
        for i in range(trainer.cfg.eval_batches):
            self._forward_chain(trainer, trainer.val_batches.batch(i))
        mine = stage.stats["lm_loss"] if self.rank == self.world - 1 else 0.0
        (total,) = _all_reduce_scalars([mine], trainer.device)
        return total / trainer.cfg.eval_batches

    def linear_totals(self, trainer: LMTrainer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        from dsctl.fp8.coverage import linear_totals

        mine = linear_totals(self.chunks[0], lambda: self._forward_chain(trainer, batch))
        return dict(zip(mine, _all_reduce_scalars(list(mine.values()), trainer.device)))

    def _forward_chain(self, trainer: LMTrainer, batch: dict[str, torch.Tensor]) -> None:
        """One batch through the stages without gradients: rank s runs stage s on what rank
        s-1 sent and passes the hidden state on; the last stage records the losses."""
        from dsctl.parallel.pipeline_stages import stage_kwargs

        ids = batch["input_ids"].to(trainer.device)
        doc_ids = batch.get("doc_ids") if trainer.cfg.doc_masking else None
        kwargs = stage_kwargs(ids, batch["labels"].to(trainer.device),
                              doc_ids.to(trainer.device) if doc_ids is not None else None, 1)[0]
        x = ids if self.rank == 0 else recv_tensor(self.rank - 1, trainer.device)
        with trainer.autocast():
            out = self.chunks[0](x, **kwargs)
        if self.rank < self.world - 1:
            send_tensor(out, self.rank + 1)

    def export(self, trainer: Trainer, out: Path, tokenizer_from: Path | None) -> None:
        """A sharded HF checkpoint: rank s writes stage s (transformers reads the index)."""
        from dsctl.model.hf import save_hf_shard

        mine = save_hf_shard(trainer.model, out, self.rank, self.world,
                             keep=lambda name: name in self.owned_names or self._owns_mtp(name))
        _write_sharded_export(self.rank, mine, trainer, out, tokenizer_from)

    def _owns_mtp(self, name: str) -> bool:
        return name.startswith("mtp.") and self.rank == self.world - 1


def _write_sharded_export(rank: int, mine: tuple[str, dict[str, int]] | None, trainer: Trainer, out: Path,
                          tokenizer_from: Path | None) -> None:
    """Rank 0 adds config, index, tokenizer and training state once every shard is written
    (`mine`: this rank's shard file and its keys, or None if it wrote none)."""
    from dsctl.model.hf import write_hf_config, write_hf_index
    from dsctl.train.artifacts import export_companions

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        write_hf_config(trainer.model.config, out)
        write_hf_index(out, [shard for shard in gathered if shard is not None])
        export_companions(out, tokenizer_from, latest_checkpoint(trainer.ckpt_dir))
    dist.barrier()


def _clip_to(norm: float, max_norm: float, params: list[nn.Parameter]) -> float:
    """Scale every gradient by torch.nn.utils.clip_grad_norm_'s factor for a global `norm`."""
    scale = min(1.0, max_norm / (norm + 1e-6))
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    return norm
