"""Expert parallelism: MoE experts sharded over ranks, tokens moved by all-to-all.

With ``E`` routed experts over ``R`` ranks, rank ``r`` owns experts
``[r*E/R, (r+1)*E/R)``. A MoE layer's router runs locally on each rank's tokens; then

1. **dispatch**: every (token, chosen expert) pair is sorted by expert and sent to the
   rank that owns the expert (one all-to-all of hidden states, after one small
   all-to-all of per-expert counts so receivers know what arrives);
2. the owner runs each local expert on the rows addressed to it;
3. **combine**: results return by the reverse all-to-all and are summed per token,
   weighted by the gate values (DeepSeek-V3: normalized gates x routed scaling, done by
   the caller, who passes the final weights).

Nothing is dropped: every assignment is computed (DeepSeek-V3 uses no token dropping).
The all-to-all is differentiable (its backward is the all-to-all with the splits
swapped), so expert and input gradients flow as in a single-process MoE.

``apply_expert_parallel(model)`` does this to every MoE layer of a ``dsctl.model``
model in place (router and shared experts stay replicated).

Backends: gloo implements ``all_to_all_single`` with uneven splits in torch 2.13 (CPU
build, checked), and so does NCCL. For a backend without it, ``impl="p2p"`` does the
same exchange with batched ``isend``/``irecv`` to every peer.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


def _exchange(x: torch.Tensor, out_splits: list[int], in_splits: list[int],
              group: Optional[dist.ProcessGroup], impl: str) -> torch.Tensor:
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    if impl == "native":
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out
    if impl != "p2p":
        raise ValueError(f"unknown all-to-all impl {impl!r}; use 'native' or 'p2p'")
    me, world = dist.get_rank(group), dist.get_world_size(group)
    chunks_in = x.contiguous().split(in_splits)
    chunks_out = out.split(out_splits)
    chunks_out[me].copy_(chunks_in[me])
    ops = []
    for peer in range(world):
        if peer == me:
            continue
        peer_global = peer if group is None else dist.get_global_rank(group, peer)
        # zero-sized messages are skipped on both sides, which agree on every size
        if in_splits[peer]:
            ops.append(dist.P2POp(dist.isend, chunks_in[peer].contiguous(), peer_global, group))
        if out_splits[peer]:
            ops.append(dist.P2POp(dist.irecv, chunks_out[peer], peer_global, group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group, impl):  # noqa: D102 (autograd protocol)
        ctx.splits, ctx.group, ctx.impl = (out_splits, in_splits), group, impl
        return _exchange(x, out_splits, in_splits, group, impl)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        out_splits, in_splits = ctx.splits
        return _exchange(grad.contiguous(), in_splits, out_splits, ctx.group, ctx.impl), None, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int],
               group: Optional[dist.ProcessGroup] = None, impl: str = "native") -> torch.Tensor:
    """Differentiable all-to-all of rows: ``in_splits[r]`` rows of ``x`` go to rank ``r``,
    ``out_splits[r]`` rows come back from it, concatenated in rank order."""
    return _AllToAll.apply(x, out_splits, in_splits, group, impl)


class ExpertParallelMoE(nn.Module):
    """Runs this rank's share of routed experts for tokens routed on every rank.

    ``local_experts`` are experts ``[rank*L, (rank+1)*L)`` of ``num_experts`` (``L =
    len(local_experts)``), each mapping ``(n, d) -> (n, d)``. Call it with this rank's
    tokens and the router's choices; returns the weighted sum of the chosen experts'
    outputs per token, exactly what a single process holding all experts computes.
    """

    def __init__(self, local_experts: nn.ModuleList, num_experts: int,
                 group: Optional[dist.ProcessGroup] = None, impl: str = "native") -> None:
        super().__init__()
        world = dist.get_world_size(group)
        if num_experts % world or len(local_experts) != num_experts // world:
            raise ValueError(f"{num_experts} experts over {world} ranks needs {num_experts // world} local experts "
                             f"per rank with num_experts divisible by ranks; got {len(local_experts)}")
        self.local_experts = local_experts
        self.num_experts, self.group, self.impl = num_experts, group, impl
        self.world = world

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """``x`` (n, d); ``topk_idx``, ``topk_weight`` (n, k) -> (n, d)."""
        n, k = topk_idx.shape
        local = len(self.local_experts)
        expert = topk_idx.reshape(-1)  # (n*k,)
        order = torch.argsort(expert, stable=True)  # group assignments by expert, hence by owner rank
        token = torch.arange(n, device=x.device).repeat_interleave(k)[order]
        per_expert = torch.bincount(expert, minlength=self.num_experts)  # (E,)
        # recv_counts[src, j]: rows rank src sends to my local expert j
        per_rank = [local] * self.world
        recv_counts = _exchange(per_expert, per_rank, per_rank, self.group, self.impl).view(self.world, local)
        send_splits = per_expert.view(self.world, local).sum(1).tolist()
        recv_splits = recv_counts.sum(1).tolist()

        received = all_to_all(x[token], recv_splits, send_splits, self.group, self.impl)  # (R, d) by src, expert
        expert_out = self._run_local_experts(received, recv_counts)
        returned = all_to_all(expert_out, send_splits, recv_splits, self.group, self.impl)  # (n*k, d) in `order`
        weight = topk_weight.reshape(-1)[order].unsqueeze(-1).to(returned.dtype)
        return torch.zeros_like(x).index_add(0, token, returned * weight)

    def _run_local_experts(self, rows: torch.Tensor, recv_counts: torch.Tensor) -> torch.Tensor:
        """Rows arrive grouped by source rank, then by expert; regroup by expert to run each once."""
        local = len(self.local_experts)
        expert_of_row = torch.arange(local, device=rows.device).repeat(self.world).repeat_interleave(
            recv_counts.reshape(-1))
        perm = torch.argsort(expert_of_row, stable=True)
        sizes = torch.bincount(expert_of_row, minlength=local).tolist()
        # An expert no row reached is not run, as in the single-process MoE: its gradient
        # stays None and AdamW leaves it alone unless another rank's copy was used.
        outs = [expert(chunk) for expert, chunk, n in zip(self.local_experts, rows[perm].split(sizes), sizes) if n]
        grouped = torch.cat(outs) if outs else rows[:0]
        return grouped[torch.argsort(perm)]  # back to arrival order


def apply_expert_parallel(model: nn.Module, group: Optional[dist.ProcessGroup] = None,
                          impl: str = "native") -> list[ExpertParallelMoE]:
    """Shard the routed experts of every ``dsctl.model`` MoE layer in ``model`` over ``group``.

    Each rank keeps experts ``[rank*L, (rank+1)*L)`` (renumbered ``experts.0..L-1`` in its
    state dict) and routes tokens to their owners by all-to-all; router, shared experts
    and everything else stay replicated. Every rank must call this on identically
    initialised models and then run forward passes in lock-step (the all-to-all is a
    collective). Returns the per-layer dispatchers.
    """
    from dsctl.model.moe import MoE

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dispatchers = []
    for moe in (m for m in model.modules() if isinstance(m, MoE)):
        num_experts = len(moe.experts)
        if num_experts % world:
            raise ValueError(f"n_routed_experts={num_experts} is not divisible by the {world} expert-parallel "
                             "ranks; pick an expert-parallel size that divides it")
        per_rank = num_experts // world
        local = nn.ModuleList(moe.experts[rank * per_rank:(rank + 1) * per_rank])
        ep = ExpertParallelMoE(local, num_experts, group, impl)
        moe.experts = local
        # MoE._dispatch(x, expert_ids, weights) is the single-device expert loop; the
        # sharded dispatcher has the same contract, so it replaces it on this instance.
        moe._dispatch = ep.forward
        dispatchers.append(ep)
    return dispatchers
