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

Split backward: a ``b`` op is one ordinary autograd pass run inside
:func:`~dsctl.parallel.weight_grad.collect_weight_grads`. Layers that honour it
(``DeferrableLinear``, ``Fp8Linear``) compute only their input gradients (dgrad) there
and queue their weight-gradient GEMMs; every other parameter (norms, embeddings, router
gates) gets its gradient at once. The stage's input gradient is sent on, and the
matching ``W`` op runs exactly the queued GEMMs, so b + W cost one full backward, as in
DeepSeek's DualPipe. :class:`~dsctl.parallel.dualpipe.DualPipe` turns its chunks'
``nn.Linear`` layers into ``DeferrableLinear``; with other layers W is a no-op and their
b computes everything. ``defer_weight_grad=False`` computes all gradients at ``b``: the
weight GEMMs are then not held back to fill bubbles, and dy and x are freed earlier.

Paired slots (DualPipe's steady state: a forward of one chunk with a backward of the
other) go through ``ScheduleRunner._forward_backward``, where a chunk class can take
over with an ``overlapped_forward_backward`` hook (see there).

Each message is a small int64 header (dtype, shape) followed by the payload, so stage
boundaries may change shape between micro-batches (e.g. a shorter last micro-batch).
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from dsctl.parallel.schedule import Op, OpKind, PipelineSchedule
from dsctl.parallel.weight_grad import WeightGradFn, collect_weight_grads

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32]
_HEADER_LEN = 8  # dtype code, ndim, up to 6 dims


def _header(payload: torch.Tensor) -> torch.Tensor:
    """The int64 header that announces `payload`'s dtype and shape to its receiver."""
    if payload.dim() > _HEADER_LEN - 2:
        raise ValueError(f"pipeline boundary tensors may have at most {_HEADER_LEN - 2} dims, got {payload.dim()}")
    dims = list(payload.shape) + [0] * (_HEADER_LEN - 2 - payload.dim())
    return torch.tensor([_DTYPES.index(payload.dtype), payload.dim(), *dims], device=payload.device)


def _announced(header: torch.Tensor) -> tuple[list[int], torch.dtype]:
    values = header.tolist()
    return values[2 : 2 + values[1]], _DTYPES[values[0]]


def send_tensor(tensor: torch.Tensor, dst: int, group: Optional[dist.ProcessGroup] = None) -> None:
    """Blocking send of any tensor, header first: for a forward chain outside a schedule."""
    payload = tensor.detach().contiguous()
    dist.send(_header(payload), dst, group=group)
    dist.send(payload, dst, group=group)


def recv_tensor(src: int, device: torch.device, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Receive what `send_tensor` sent from `src`."""
    header = torch.empty(_HEADER_LEN, dtype=torch.int64, device=device)
    dist.recv(header, src, group=group)
    shape, dtype = _announced(header)
    out = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(out, src, group=group)
    return out


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
            shape, dtype = _announced(self._recv((_HEADER_LEN,), torch.int64))
            self.parked[self.expected[self.next]] = self._recv(shape, dtype)
            self.next += 1
        return self.parked.pop(key)


class ScheduleRunner:
    """Executes this rank's part of ``schedule`` once (one training step).

    ``chunks[direction]`` is the module this rank runs for micro-batches of that
    direction. ``loss_fn(output, labels)`` runs after the last stage (``None``: the last
    stage's output is the micro-batch loss itself); every micro-batch loss is multiplied
    by ``1 / num_microbatches`` before backward so accumulated gradients are those of the
    mean loss over the batch. ``defer_weight_grad``: split backwards queue the weight
    GEMMs of the chunks' deferring layers for their W ops (see the module docstring).
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
        self._deferred: dict[tuple[int, int], list[WeightGradFn]] = {}
        self._inputs: tuple[torch.Tensor, ...] = ()  # run()'s micro-batches, labels and kwargs
        self._labels: tuple[torch.Tensor, ...] = ()
        self._kwargs: Sequence[dict[str, Any]] = ()
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
        for t in (_header(payload), payload):
            self._sends.append((dist.isend(t, dst=dst, group=link), t))

    def _recv(self, kind: _Msg, op: Op, from_stage: int) -> torch.Tensor:
        src = self.schedule.rank_of(op.direction, from_stage)
        return self._inboxes[src].get((kind, op.direction, op.microbatch))

    def _micro_kwargs(self, op: Op) -> dict[str, Any]:
        return self._kwargs[op.microbatch] if self._kwargs else {}

    def _forward_input(self, op: Op) -> torch.Tensor:
        """The stage input of forward ``op``: its micro-batch on stage 0, else received."""
        last = op.stage == self.schedule.num_stages - 1
        needs_labels = last and self.loss_fn is not None
        for needed, given, what in ((op.stage == 0, self._inputs, "inputs"), (needs_labels, self._labels, "labels")):
            if needed and not given:
                raise ValueError(f"{self.schedule.name} rank {self.rank} runs stage {op.stage} of direction "
                                 f"{op.direction} and needs `{what}` in step(); pass the batch on this rank")
        if op.stage == 0:
            return self._inputs[op.microbatch].to(self.device)
        x = self._recv(_Msg.ACT, op, op.stage - 1)
        x.requires_grad_(x.is_floating_point())
        return x

    def _forward_output(self, op: Op, x: torch.Tensor, out: torch.Tensor) -> None:
        """Send ``out`` on (or turn it into the scaled loss on the last stage) and keep it for B."""
        if op.stage == self.schedule.num_stages - 1:
            loss = out if self.loss_fn is None else self.loss_fn(out, self._labels[op.microbatch].to(self.device))
            self._loss_sum += loss.detach()
            out = loss * self.loss_scale
        else:
            self._send(op, out)
        self._saved[(op.direction, op.microbatch)] = (x, out)

    def _forward(self, op: Op) -> None:
        x = self._forward_input(op)
        self._forward_output(op, x, self.chunks[op.direction](x, **self._micro_kwargs(op)))

    def _backward_input(self, op: Op) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(stage input, stage output, gradient w.r.t. that output: None on the last stage)."""
        x, out = self._saved.pop((op.direction, op.microbatch))
        last = op.stage == self.schedule.num_stages - 1
        return x, out, None if last else self._recv(_Msg.GRAD, op, op.stage + 1)

    @contextlib.contextmanager
    def _weight_grads_of(self, op: Op) -> Iterator[None]:
        """Around a B's autograd pass: a split one queues its weight GEMMs for the W op."""
        if not (op.split and self.defer_weight_grad):
            yield
            return
        with collect_weight_grads() as queued:
            yield
        self._deferred[(op.direction, op.microbatch)] = queued

    def _backward_output(self, op: Op, x: torch.Tensor) -> None:
        if op.stage > 0:  # stage 0's input is the batch itself: nothing to send
            self._send(op, x.grad if x.grad is not None else torch.zeros_like(x))

    def _backward(self, op: Op) -> None:
        x, out, grad = self._backward_input(op)
        with self._weight_grads_of(op):
            torch.autograd.backward(out, grad)
        self._backward_output(op, x)

    def _weight(self, op: Op) -> None:
        if not self.defer_weight_grad:
            return  # its b computed every gradient
        for compute in self._deferred.pop((op.direction, op.microbatch)):  # the GEMMs its b queued
            compute()

    def _forward_backward(self, f_op: Op, b_op: Op) -> None:
        """A slot pairing F of one chunk with B of the other (DualPipe's steady state).

        If the forward chunk's class defines ``overlapped_forward_backward(forward_chunk,
        forward_input, forward_kwargs, backward_chunk, backward_output, backward_grad)``
        (a classmethod or staticmethod), both ops' receives are done first and the hook
        runs ``forward_chunk(forward_input, **forward_kwargs)`` and
        ``torch.autograd.backward(backward_output, backward_grad)`` (``backward_grad`` is
        None when ``backward_output`` is the last stage's scaled loss), interleaved as it
        likes, and returns the forward output, whose send is issued at once. A split
        backward's weight GEMMs are queued as in :meth:`_backward`. Without the hook the
        forward runs and its send is issued, then the backward receives its gradient and
        runs. On GPUs the hook is where one chunk's communication (pipeline sends, the MoE
        all-to-all) would hide behind the other chunk's compute, as in DeepSeek's
        DualPipe; here, either way, the two run one after the other.
        """
        f_chunk, b_chunk = self.chunks[f_op.direction], self.chunks[b_op.direction]
        overlapped = getattr(type(f_chunk), "overlapped_forward_backward", None)
        if overlapped is None:
            self._forward(f_op)
            self._backward(b_op)
            return
        x_f = self._forward_input(f_op)
        x_b, out_b, grad_b = self._backward_input(b_op)
        with self._weight_grads_of(b_op):
            out_f = overlapped(f_chunk, x_f, self._micro_kwargs(f_op), b_chunk, out_b, grad_b)
        self._forward_output(f_op, x_f, out_f)
        self._backward_output(b_op, x_b)

    def run(self, inputs: Optional[torch.Tensor], labels: Optional[torch.Tensor],
            micro_kwargs: Optional[Sequence[dict[str, Any]]] = None) -> torch.Tensor:
        """Run the step; returns the sum of the (unscaled) micro-batch losses computed here.

        ``micro_kwargs[m]``, if given, are keyword arguments every stage's forward gets for
        micro-batch m: what a stage needs besides the boundary tensor (document ids, labels)
        and every rank can build from the batch itself, so it never travels the pipeline.
        """
        m = self.schedule.num_microbatches
        self._inputs = _split(inputs, m, "inputs")
        self._labels = _split(labels, m, "labels")
        if micro_kwargs is not None and len(micro_kwargs) != m:
            raise ValueError(f"micro_kwargs has {len(micro_kwargs)} entries for {m} micro-batches")
        self._kwargs = micro_kwargs or ()
        for slot in self.schedule.rank_slots[self.rank]:
            if len(slot) == 2:
                f_op, b_op = slot if slot[0].kind is OpKind.F else slot[::-1]
                if (f_op.kind, b_op.kind) != (OpKind.F, OpKind.B):
                    raise ValueError(f"{self.schedule.name}: a paired slot must hold one F and one B, got {slot}")
                self._forward_backward(f_op, b_op)
                continue
            (op,) = slot
            if op.kind is OpKind.F:
                self._forward(op)
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
