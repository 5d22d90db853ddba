"""DualPipe: DeepSeek-V3's bidirectional pipeline schedule (tech report §3.2.1).

The model is cut into ``P`` stages (``P`` even). Rank ``i`` holds *two* chunks: stage
``i`` for micro-batches travelling in direction 0 (they enter at rank 0) and a second
copy of stage ``P-1-i`` for micro-batches travelling in direction 1 (they enter at rank
``P-1``). Half of the step's micro-batches go each way, so both ends of the pipeline
start working at once and the warm-up / cool-down bubbles of the two directions fill
each other. In the steady state each slot pairs the forward of one direction with the
backward of the other, so one chunk's communication (pipeline sends; on GPUs also the
MoE all-to-all) hides behind the other chunk's compute. Backward is split in the
warm-up and cool-down into "backward for input" (``b``, sent on at once) and "backward
for weights" (``W``, run later to fill holes), the zero-bubble trick. With
``defer_weight_grad`` (the default) the chunks' ``nn.Linear`` layers become
``DeferrableLinear`` (``weight_grad.py``), so a ``b`` runs the dgrad GEMMs only and its
``W`` exactly the wgrad GEMMs it queued: together one full backward's work.

By default a pair's two ops run one after the other: the forward's send is in flight
while the backward computes. A chunk class that can truly interleave its forward and
backward (DeepSeek splits attention / dispatch / MLP / combine across two CUDA streams)
defines ``overlapped_forward_backward``, which the executor calls for every paired slot
(see ``ScheduleRunner._forward_backward``).

Rank ``r`` of ``P`` with ``h = min(r, P-1-r)``, ``H = P/2`` and ``N`` micro-batches per
direction runs eight phases. "Phase-0" is the direction whose entry is on this rank's
side (direction 0 for the first half of the ranks, direction 1 for the second):

1. ``2(H-h-1)`` forwards of phase 0 (warm-up: fill the pipeline from this side)
2. ``h+1`` x (F phase 0, F phase 1)
3. ``H-h-1`` x (b phase 1, W, F phase 1)          zero-bubble backward
4. ``N-P+h+1`` x ((F0 & B1), (F1 & B0))          steady state, overlapped pairs
5. ``H-h-1`` x (B phase 1, (F1 & B0))
6. ``h+1`` x (B phase 1, B phase 0)             the second half of these split
7. ``H-h-1`` x (W, b phase 0)
8. ``h+1`` x W                                    drain deferred weight gradients

Timeline for P=4, 8 micro-batches (0-3 travel direction 0, 4-7 direction 1), with
F=1, B=2, W=1 and F&B=3 (overlap shown, no speed-up assumed), as printed by
``python -m dsctl.parallel.schedule_sim --ranks 4 --microbatches 8 --overlapped 3 --timeline``.
A digit is a forward of that micro-batch, ``B`` a full backward, ``b`` a backward for
input, ``W`` a backward for weights, ``<=>`` an overlapped forward+backward pair of the
two directions, ``.`` idle::

    1F1B     rank 0: 0123......BB4BB5BB6BB7BB.BB.BB.BB     bubble 9 = (P-1)(F+B)
             rank 1: .012....BB3BB4BB5BB6BB7BB.BB.BB..
             rank 2: ..01..BB2BB3BB4BB5BB6BB7BB.BB....
             rank 3: ...0BB1BB2BB3BB4BB5BB6BB7BB......
    DualPipe rank 0: 0124bW5<=>.<=>BB.<=>BBbWbW            bubble 2 = (P/2-1)(F&B+B-3W)
             rank 1: .04152BB<=><=><=>BBBB.bbWW
             rank 2: .40516BB<=><=><=>BBBB.bbWW
             rank 3: 4560bW1<=>.<=>BB.<=>BBbWbW

Rank 0 starts direction 0 (micro-batches 0, 1, 2), rank 3 direction 1 (4, 5, 6), and
the two streams cross in the middle; their backwards return the same way, so the ends
never wait for a full pipeline fill as in 1F1B.

Gradients: each stage exists twice (rank ``i`` for direction 0, rank ``P-1-i`` for
direction 1). After the step the two copies' gradients are summed by a point-to-point
exchange between mirror ranks, so both hold the gradient of the whole batch, exactly as
a single process running all micro-batches would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from dsctl.parallel.pipeline import LinkGroups, ScheduleRunner, global_rank
from dsctl.parallel.schedule import Op, OpKind, PipelineSchedule, Slot
from dsctl.parallel.weight_grad import make_weight_grads_deferrable


class _RankPlan:
    """Builds one rank's slot list, tracking micro-batch counters and deferred W's."""

    def __init__(self, rank: int, num_ranks: int, per_direction: int) -> None:
        self.rank = rank
        self.num_ranks = num_ranks
        near = 0 if rank < num_ranks // 2 else 1
        # phase -> direction: phase 0 is the direction entering on this rank's side.
        self.direction = (near, 1 - near)
        self.next_f = [d * per_direction for d in self.direction]
        self.next_b = list(self.next_f)
        self.deferred: deque[Op] = deque()
        self.slots: list[Slot] = []

    def _stage(self, direction: int) -> int:
        return self.rank if direction == 0 else self.num_ranks - 1 - self.rank

    def f(self, phase: int) -> Op:
        d = self.direction[phase]
        op = Op(OpKind.F, d, self._stage(d), self.next_f[phase])
        self.next_f[phase] += 1
        return op

    def b(self, phase: int, split: bool = False) -> Op:
        d = self.direction[phase]
        op = Op(OpKind.B, d, self._stage(d), self.next_b[phase], split=split)
        self.next_b[phase] += 1
        if split:
            self.deferred.append(op)
        return op

    def w(self) -> Op:
        done = self.deferred.popleft()
        return Op(OpKind.W, done.direction, done.stage, done.microbatch)

    def add(self, *ops: Op) -> None:
        self.slots.append(tuple(ops))


def _plan_rank(rank: int, num_ranks: int, per_direction: int) -> list[Slot]:
    """The eight DualPipe phases for one rank (see the module docstring)."""
    plan = _RankPlan(rank, num_ranks, per_direction)
    half = num_ranks // 2
    h = min(rank, num_ranks - 1 - rank)
    is_middle = h == half - 1
    for _ in range(2 * (half - h - 1)):  # 1: warm-up forwards from this side
        plan.add(plan.f(0))
    for _ in range(h + 1):  # 2: forwards of both directions
        plan.add(plan.f(0))
        plan.add(plan.f(1))
    for _ in range(half - h - 1):  # 3: zero-bubble backwards of phase 1
        plan.add(plan.b(1, split=True))
        plan.add(plan.w())
        plan.add(plan.f(1))
    for i in range(per_direction - num_ranks + h + 1):  # 4: steady state
        if i == 0 and is_middle:
            # As in DeepSeek's reference schedule, the two middle ranks run their first
            # steady-state forward and backward un-overlapped, so the forward's output
            # leaves for the other middle rank before the backward starts. (Our zero-latency
            # simulator gives the same bubble either way; with real send latency it helps.)
            plan.add(plan.f(0))
            plan.add(plan.b(1))
        else:
            plan.add(plan.f(0), plan.b(1))
        plan.add(plan.f(1), plan.b(0))
    for _ in range(half - h - 1):  # 5: start of cool-down
        plan.add(plan.b(1))
        plan.add(plan.f(1), plan.b(0))
    split = False
    for i in range(h + 1):  # 6: backwards of both phases; the second half split
        if i == (h + 1) // 2 and h % 2 == 1:
            split = True
        plan.add(plan.b(1, split=split))
        if i == (h + 1) // 2 and h % 2 == 0:
            split = True
        plan.add(plan.b(0, split=split))
    for _ in range(half - h - 1):  # 7: fill with deferred weight grads
        plan.add(plan.w())
        plan.add(plan.b(0, split=True))
    for _ in range(h + 1):  # 8: drain
        plan.add(plan.w())
    return plan.slots


def dualpipe_schedule(num_ranks: int, num_microbatches: int) -> PipelineSchedule:
    """Build the DualPipe op order for ``num_ranks`` (even) and ``num_microbatches``.

    Needs ``num_microbatches`` even and at least ``2 * num_ranks`` (``num_ranks`` per
    direction) so the steady state exists on every rank.
    """
    if num_ranks < 2 or num_ranks % 2:
        raise ValueError(f"DualPipe needs an even number of pipeline ranks >= 2, got {num_ranks}")
    if num_microbatches % 2 or num_microbatches < 2 * num_ranks:
        raise ValueError(
            f"DualPipe needs an even number of micro-batches >= 2 x ranks = {2 * num_ranks}, "
            f"got {num_microbatches}; raise num_microbatches"
        )
    per_direction = num_microbatches // 2
    schedule = PipelineSchedule("DualPipe", num_ranks, num_ranks, num_microbatches, num_directions=2)
    schedule.rank_slots = [_plan_rank(r, num_ranks, per_direction) for r in range(num_ranks)]
    schedule.validate()
    return schedule


class DualPipe:
    """Run a DualPipe step over torch.distributed point-to-point ops.

    On rank ``r`` of ``P`` (``P`` even) ``chunks = (stage r, stage P-1-r)``: the first
    serves direction 0, the second direction 1. Both copies of a stage must start with
    equal weights (build the model with the same seed everywhere). ``loss_fn(output,
    labels)`` runs after the last stage, on rank ``P-1`` for direction 0 and on rank 0
    for direction 1. After :meth:`step` every chunk holds the gradient of the batch's
    mean loss, as a single process running all micro-batches would produce.

    ``sync_mirror_grads=False`` leaves each copy with its own direction's gradient (sum
    them yourself, e.g. fused with a data-parallel all-reduce). With ``defer_weight_grad``
    (the default) the chunks' exact ``nn.Linear`` layers are turned, in place and once,
    into ``DeferrableLinear`` (same parameters and state-dict keys; ``Fp8Linear`` defers
    by itself) so that W ops run their weight GEMMs; ``False`` computes every gradient at
    the split backwards and leaves the chunks untouched (see ``pipeline.py``).
    """

    def __init__(
        self,
        chunks: tuple[nn.Module, nn.Module],
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
        group: Optional[dist.ProcessGroup] = None,
        links: Optional[LinkGroups] = None,
        sync_mirror_grads: bool = True,
        defer_weight_grad: bool = True,
    ) -> None:
        self.chunks = chunks
        self.loss_fn = loss_fn
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.num_ranks = dist.get_world_size(self.group)
        self.links = LinkGroups.for_group(self.group, links)
        if self.num_ranks % 2:
            raise ValueError(f"DualPipe needs an even number of pipeline ranks, got a group of {self.num_ranks}")
        self.sync_mirror_grads = sync_mirror_grads
        self.defer_weight_grad = defer_weight_grad
        if defer_weight_grad:
            for chunk in chunks:
                make_weight_grads_deferrable(chunk)
        self.mirror = self.num_ranks - 1 - self.rank
        self.idle_s = 0.0
        """Seconds the last step waited on neighbours (see ScheduleRunner.idle_s)."""

    def step(
        self,
        inputs: Optional[torch.Tensor],
        labels: Optional[torch.Tensor],
        num_microbatches: int,
        micro_kwargs: Optional[Sequence[dict[str, Any]]] = None,
    ) -> Optional[torch.Tensor]:
        """One forward+backward step; returns the batch's mean loss on ranks 0 and P-1.

        Pass the full ``inputs`` and ``labels`` on ranks 0 and ``P-1`` (others may pass
        None). They are split along dim 0 into ``num_microbatches`` micro-batches; the
        first half enters at rank 0, the second half at rank ``P-1``.
        """
        schedule = dualpipe_schedule(self.num_ranks, num_microbatches)
        executor = ScheduleRunner(schedule, {0: self.chunks[0], 1: self.chunks[1]}, self.loss_fn, self.group,
                                    self.links, self.defer_weight_grad)
        loss_sum = executor.run(inputs, labels, micro_kwargs)
        self.idle_s = executor.idle_s
        if self.sync_mirror_grads:
            self.sum_mirror_grads()
        if self.rank not in (0, self.num_ranks - 1):
            return None
        other = self.exchange([loss_sum.reshape(1)], global_rank(self.group, self.num_ranks - 1 - self.rank))
        return (loss_sum + other[0][0]) / num_microbatches

    def sum_mirror_grads(self) -> None:
        """Add the gradients of the mirror rank's copies of this rank's two stages."""
        # Both ranks walk the stages in ascending order so sends and receives pair up; a
        # parameter both chunks share (the embedding when the last stage runs MTP) is
        # one tensor on each rank and is summed once.
        stages = sorted([(self.rank, self.chunks[0]), (self.mirror, self.chunks[1])], key=lambda s: s[0])
        params = list({id(p): p for _, module in stages for p in _trainable(module)}.values())
        (received,) = self.exchange([torch.cat([p.grad.reshape(-1) for p in params])],
                                     global_rank(self.group, self.mirror))
        for p, grad in zip(params, received.split([p.numel() for p in params])):
            p.grad.add_(grad.view_as(p))

    def exchange(self, tensors: list[torch.Tensor], peer: int) -> list[torch.Tensor]:
        """Send ``tensors`` to ``peer`` and receive same-shaped ones back, in one batch."""
        out = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, peer, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, peer, self.group) for t in out]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        return out


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a parameter no micro-batch touched still has a zero gradient
            p.grad = torch.zeros_like(p)
    return params
