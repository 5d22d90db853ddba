"""Run a :class:`PipelineSchedule` on this rank with torch.distributed point-to-point ops.

One executor serves every schedule (1F1B, DualPipe): it walks the rank's slots and for
each op receives what it needs, computes, and sends what it produced.

Message ordering. Sends are non-blocking (``isend``, waited for at the end of the step)
and receives block only when an op needs the tensor. Every rank can build the whole
schedule, so it knows the exact order in which each neighbour sends to it; receives on a
link are taken in that order (a message that arrives before it is needed is parked), so
matching never relies on tags. With gloo the only way to block is to wait for a tensor
the sender has not yet produced, so a schedule that the simulator plays without
deadlock runs without one (tested on CPU for P=2 and P=4).

Traffic towards higher ranks and towards lower ranks can travel on two separate process
groups (:class:`LinkGroups`). NCCL runs each pair's operations of one group on one
stream, so with a single group a send still waiting for its receiver could hold back a
later receive from that same peer; split this way every (group, pair) stream carries one
direction only, and the argument above holds there too. DualPipe/OneF1B over the whole
world create the split themselves; for sub-group pipelines pass the ``links`` that
:func:`dsctl.parallel.dist.pipeline_data_groups` builds (group creation is collective
over the world, so it cannot happen inside one pipeline). Checked on gloo only: no
multi-GPU machine was available.

Split backward: a ``b`` op is ``autograd.grad`` w.r.t. the stage input only (the weight
GEMMs are skipped), a ``W`` op later differentiates w.r.t. the parameters from the
retained graph. Generic modules cannot reuse b's intermediate input gradients, so W
repeats the input-gradient chain inside the stage: correct, but a W costs about a full
backward here rather than DeepSeek's weight-GEMMs-only W (which needs layer-level hooks).
``defer_weight_grad=False`` computes both gradients at ``b`` (no repeated work, W a no-op):
the better choice when no communication wait is there to hide, as on CPU.

Each message is a small int64 header (dtype, shape) followed by the payload, so stage
boundaries may change shape between micro-batches (e.g. a shorter last micro-batch).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from dsctl.parallel.schedule import Op, OpKind, PipelineSchedule

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32]
_HEADER_LEN = 8  # dtype code, ndim, up to 6 dims


class _Msg(str, enum.Enum):
    ACT = "act"  # forward activation, stage s -> s+1
    GRAD = "grad"  # gradient w.r.t. a stage's input, stage s -> s-1


_MsgKey = tuple[_Msg, int, int]  # (kind, direction, microbatch)


@dataclass(frozen=True)
class LinkGroups:
    """Two communicators over the same ranks: one for sends to higher ranks, one for lower."""

    up: dist.ProcessGroup
    down: dist.ProcessGroup

    @classmethod
    def create(cls, group: dist.ProcessGroup) -> LinkGroups:
        """Collective over the *whole world* (``new_group``): every rank must call it, in order."""
        ranks = dist.get_process_group_ranks(group)
        return cls(dist.new_group(ranks), dist.new_group(ranks))

    @classmethod
    def single(cls, group: dist.ProcessGroup) -> LinkGroups:
        """Both directions on ``group`` itself: fine for gloo, see the NCCL note above."""
        return cls(group, group)

    @classmethod
    def for_group(cls, group: dist.ProcessGroup, links: Optional[LinkGroups] = None) -> LinkGroups:
        """The links a schedule on ``group`` uses: ``links`` if given; else, over the whole
        world (where every rank is present, so creating groups is safe) two fresh groups; a
        sub-group pipeline gets its links from pipeline_data_groups (or shares one group)."""
        if links is not None:
            return links
        return cls.create(group) if group is dist.group.WORLD else cls.single(group)

    def between(self, src: int, dst: int) -> dist.ProcessGroup:
        return self.up if dst > src else self.down


def global_rank(group: dist.ProcessGroup, group_rank: int) -> int:
    """The default-group rank of ``group_rank`` in ``group``."""
    return group_rank if group is dist.group.WORLD else dist.get_global_rank(group, group_rank)


def _sent_message(schedule: PipelineSchedule, op: Op) -> Optional[tuple[_MsgKey, int]]:
    """(message key, destination rank) that ``op`` sends, or None."""
    last = schedule.num_stages - 1
    if op.kind is OpKind.F and op.stage < last:
        return (_Msg.ACT, op.direction, op.microbatch), schedule.rank_of(op.direction, op.stage + 1)
    if op.kind is OpKind.B and op.stage > 0:
        return (_Msg.GRAD, op.direction, op.microbatch), schedule.rank_of(op.direction, op.stage - 1)
    return None


class _Inbox:
    """Receives from one neighbour in the neighbour's send order, parking early arrivals."""

    def __init__(self, src: int, expected: list[_MsgKey], group: dist.ProcessGroup, device: torch.device):
        self.src, self.expected, self.group, self.device = src, expected, group, device
        self.next = 0
        self.parked: dict[_MsgKey, torch.Tensor] = {}
        self.waited_s = 0.0
        """Seconds spent blocked on this neighbour: the rank's idle time (its bubble)."""

    def _recv(self, shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        started = time.perf_counter()
        dist.irecv(buf, src=self.src, group=self.group).wait()
        self.waited_s += time.perf_counter() - started
        return buf

    def get(self, key: _MsgKey) -> torch.Tensor:
        while key not in self.parked:
            if self.next >= len(self.expected):
                raise RuntimeError(f"rank waits for {key} from rank {self.src}, which never sends it")
            header = self._recv((_HEADER_LEN,), torch.int64).tolist()
            dtype, ndim = _DTYPES[header[0]], header[1]
            self.parked[self.expected[self.next]] = self._recv(header[2 : 2 + ndim], dtype)
            self.next += 1
        return self.parked.pop(key)


class PipelineExecutor:
    """Executes this rank's part of ``schedule`` once (one training step).

    ``chunks[direction]`` is the module this rank runs for micro-batches of that
    direction. ``loss_fn(output, labels)`` runs after the last stage (``None``: the last
    stage's output is the micro-batch loss itself); every micro-batch loss is multiplied by ``1 / num_microbatches`` before backward so accumulated
    gradients are those of the mean loss over the batch.
    """

    def __init__(
        self,
        schedule: PipelineSchedule,
        chunks: dict[int, nn.Module],
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
        group: dist.ProcessGroup,
        links: Optional[LinkGroups] = None,
        defer_weight_grad: bool = True,
    ) -> None:
        self.schedule, self.chunks, self.loss_fn, self.group = schedule, chunks, loss_fn, group
        self.defer_weight_grad = defer_weight_grad
        self.links = links if links is not None else LinkGroups.single(group)
        self.rank = dist.get_rank(group)
        if dist.get_world_size(group) != schedule.num_ranks:
            raise ValueError(f"{schedule.name} built for {schedule.num_ranks} ranks but the process group has "
                             f"{dist.get_world_size(group)}; launch with --nproc-per-node {schedule.num_ranks}")
        first_param = next(next(iter(chunks.values())).parameters(), None)
        self.device = first_param.device if first_param is not None else torch.device("cpu")
        self.loss_scale = 1.0 / schedule.num_microbatches
        # Stages that add auxiliary losses themselves (MoE balance) must scale them like
        # the main loss; they opt in by defining set_loss_scale.
        for chunk in chunks.values():
            for module in chunk.modules():
                if hasattr(module, "set_loss_scale"):
                    module.set_loss_scale(self.loss_scale)
        self._inboxes = self._build_inboxes()
        self._sends: list[tuple[dist.Work, torch.Tensor]] = []
        self._saved: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._deferred: dict[tuple[int, int], tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self._loss_sum = torch.zeros((), device=self.device)
        self.idle_s = 0.0
        """After `run`: seconds this rank spent waiting for its neighbours (measured bubble)."""

    def _build_inboxes(self) -> dict[int, _Inbox]:
        expected: dict[int, list[_MsgKey]] = {}
        for src, slots in enumerate(self.schedule.rank_slots):
            for op in (op for slot in slots for op in slot):
                sent = _sent_message(self.schedule, op)
                if sent is not None and sent[1] == self.rank:
                    expected.setdefault(src, []).append(sent[0])
        inboxes = {}
        for src, keys in expected.items():
            link = self.links.between(src, self.rank)
            inboxes[src] = _Inbox(global_rank(link, src), keys, link, self.device)
        return inboxes

    def _send(self, op: Op, tensor: torch.Tensor) -> None:
        sent = _sent_message(self.schedule, op)
        assert sent is not None
        link = self.links.between(self.rank, sent[1])
        dst = global_rank(link, sent[1])
        payload = tensor.detach().contiguous()
        if payload.dim() > _HEADER_LEN - 2:
            raise ValueError(f"pipeline boundary tensors may have at most {_HEADER_LEN - 2} dims, got {payload.dim()}")
        dims = list(payload.shape) + [0] * (_HEADER_LEN - 2 - payload.dim())
        header = torch.tensor([_DTYPES.index(payload.dtype), payload.dim(), *dims], device=self.device)
        for t in (header, payload):
            self._sends.append((dist.isend(t, dst=dst, group=link), t))

    def _recv(self, kind: _Msg, op: Op, from_stage: int) -> torch.Tensor:
        src = self.schedule.rank_of(op.direction, from_stage)
        return self._inboxes[src].get((kind, op.direction, op.microbatch))

    def _forward(self, op: Op, inputs: tuple[torch.Tensor, ...], labels: tuple[torch.Tensor, ...],
                 micro_kwargs: Sequence[dict[str, Any]]) -> None:
        last = op.stage == self.schedule.num_stages - 1
        needs_labels = last and self.loss_fn is not None
        for needed, given, what in ((op.stage == 0, inputs, "inputs"), (needs_labels, labels, "labels")):
            if needed and not given:
                raise ValueError(f"{self.schedule.name} rank {self.rank} runs stage {op.stage} of direction "
                                 f"{op.direction} and needs `{what}` in step(); pass the batch on this rank")
        if op.stage == 0:
            x = inputs[op.microbatch].to(self.device)
        else:
            x = self._recv(_Msg.ACT, op, op.stage - 1)
            x.requires_grad_(x.is_floating_point())
        out = self.chunks[op.direction](x, **(micro_kwargs[op.microbatch] if micro_kwargs else {}))
        if last:
            loss = out if self.loss_fn is None else self.loss_fn(out, labels[op.microbatch].to(self.device))
            self._loss_sum += loss.detach()
            out = loss * self.loss_scale
        else:
            self._send(op, out)
        self._saved[(op.direction, op.microbatch)] = (x, out)

    def _backward(self, op: Op) -> None:
        x, out = self._saved.pop((op.direction, op.microbatch))
        last = op.stage == self.schedule.num_stages - 1
        grad = None if last else self._recv(_Msg.GRAD, op, op.stage + 1)
        needs_input_grad = op.stage > 0
        if op.split and self.defer_weight_grad:
            # Backward for input only; the weight gradient waits for the matching W op.
            if needs_input_grad:
                (gx,) = torch.autograd.grad(out, x, grad, retain_graph=True, allow_unused=True)
                self._send(op, gx if gx is not None else torch.zeros_like(x))
            self._deferred[(op.direction, op.microbatch)] = (out, grad)
            return
        torch.autograd.backward(out, grad)
        if needs_input_grad:
            self._send(op, x.grad if x.grad is not None else torch.zeros_like(x))

    def _weight(self, op: Op) -> None:
        if not self.defer_weight_grad:
            return  # its b already computed the weight gradient
        out, grad = self._deferred.pop((op.direction, op.microbatch))
        params = [p for p in self.chunks[op.direction].parameters() if p.requires_grad]
        torch.autograd.backward(out, grad, inputs=params)

    def run(self, inputs: Optional[torch.Tensor], labels: Optional[torch.Tensor],
            micro_kwargs: Optional[Sequence[dict[str, Any]]] = None) -> torch.Tensor:
        """Run the step; returns the sum of the (unscaled) micro-batch losses computed here.

        ``micro_kwargs[m]``, if given, are keyword arguments every stage's forward gets for
        micro-batch m: what a stage needs besides the boundary tensor (document ids, labels)
        and every rank can build from the batch itself, so it never travels the pipeline.
        """
        m = self.schedule.num_microbatches
        in_mbs = _split(inputs, m, "inputs")
        label_mbs = _split(labels, m, "labels")
        if micro_kwargs is not None and len(micro_kwargs) != m:
            raise ValueError(f"micro_kwargs has {len(micro_kwargs)} entries for {m} micro-batches")
        for slot in self.schedule.rank_slots[self.rank]:
            # A pair runs F then B: F's send is in flight while B computes (the CPU form
            # of DualPipe's overlap; on GPUs comm streams overlap more).
            for op in slot:
                if op.kind is OpKind.F:
                    self._forward(op, in_mbs, label_mbs, micro_kwargs or ())
                elif op.kind is OpKind.B:
                    self._backward(op)
                else:
                    self._weight(op)
        started = time.perf_counter()
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()
        self.idle_s = time.perf_counter() - started + sum(box.waited_s for box in self._inboxes.values())
        return self._loss_sum


def _split(batch: Optional[torch.Tensor], num_microbatches: int, what: str) -> tuple[torch.Tensor, ...]:
    if batch is None:
        return ()
    if batch.shape[0] < num_microbatches:
        raise ValueError(f"`{what}` has batch size {batch.shape[0]} < num_microbatches={num_microbatches}")
    return batch.tensor_split(num_microbatches)
