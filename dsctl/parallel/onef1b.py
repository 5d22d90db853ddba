"""Classic one-forward-one-backward (1F1B, PipeDream-flush) pipeline schedule.

Rank ``r`` of ``P`` runs ``P - r - 1`` warm-up forwards, then alternates one forward
and one backward until its forwards are used up, then drains the remaining backwards.
Every rank holds one stage. Its bubble is ``(P - 1)(F + B)`` per step, which is what
DualPipe is measured against (see ``schedule_sim.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from dsctl.parallel.pipeline import LinkGroups, ScheduleRunner
from dsctl.parallel.schedule import Op, OpKind, PipelineSchedule, Slot


def onef1b_schedule(num_ranks: int, num_microbatches: int) -> PipelineSchedule:
    """Build the 1F1B op order for ``num_ranks`` stages and ``num_microbatches``."""
    if num_ranks < 1 or num_microbatches < 1:
        raise ValueError(f"1F1B needs at least one rank and one micro-batch, got P={num_ranks}, M={num_microbatches}")
    schedule = PipelineSchedule("1F1B", num_ranks, num_ranks, num_microbatches, num_directions=1)

    def fwd(rank: int, mb: int) -> Slot:
        return (Op(OpKind.F, 0, rank, mb),)

    def bwd(rank: int, mb: int) -> Slot:
        return (Op(OpKind.B, 0, rank, mb),)

    for rank in range(num_ranks):
        warmup = min(num_ranks - rank - 1, num_microbatches)
        slots: list[Slot] = []
        slots += [fwd(rank, mb) for mb in range(warmup)]
        for i in range(num_microbatches - warmup):
            slots += [fwd(rank, warmup + i), bwd(rank, i)]
        slots += [bwd(rank, mb) for mb in range(num_microbatches - warmup, num_microbatches)]
        schedule.rank_slots.append(slots)
    schedule.validate()
    return schedule


class OneF1B:
    """Run a 1F1B pipeline step over torch.distributed point-to-point ops.

    Rank ``r`` of ``group`` holds ``stage`` = stage ``r`` of the model. ``loss_fn(output,
    labels)`` is called on the last rank for each micro-batch. Each micro-batch loss is
    scaled by ``1 / num_microbatches`` before backward, so the gradients accumulated in
    ``stage`` equal those of a single process running the whole batch as micro-batches
    and averaging their losses.
    """

    def __init__(
        self,
        stage: nn.Module,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
        group: Optional[dist.ProcessGroup] = None,
        links: Optional[LinkGroups] = None,
    ) -> None:
        self.stage = stage
        self.loss_fn = loss_fn
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.num_ranks = dist.get_world_size(self.group)
        self.links = LinkGroups.for_group(self.group, links)
        self.idle_s = 0.0
        """Seconds the last step waited on neighbours (see ScheduleRunner.idle_s)."""

    def step(
        self,
        inputs: Optional[torch.Tensor],
        labels: Optional[torch.Tensor],
        num_microbatches: int,
        micro_kwargs: Optional[Sequence[dict[str, Any]]] = None,
    ) -> Optional[torch.Tensor]:
        """One forward+backward step; returns the batch's mean loss on the last rank, None elsewhere.

        ``inputs`` is needed on rank 0 and ``labels`` on the last rank (other ranks may pass
        None); both are split along dim 0 into ``num_microbatches`` micro-batches.
        """
        schedule = onef1b_schedule(self.num_ranks, num_microbatches)
        executor = ScheduleRunner(schedule, {0: self.stage}, self.loss_fn, self.group,
                                    self.links)
        loss_sum = executor.run(inputs, labels, micro_kwargs)
        self.idle_s = executor.idle_s
        if self.rank != self.num_ranks - 1:
            return None
        return loss_sum / num_microbatches
