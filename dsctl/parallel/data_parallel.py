"""Data parallelism applied to a single-device model: a gradient mean over ranks.

Every rank holds the model, runs its own slice of the batch, and gradients are averaged
across ranks after backward, so one step over ``R`` ranks x ``b`` rows equals one
single-process step over the concatenated ``R x b`` rows when the loss is a mean over
rows. One flat all-reduce works for any module, the two DualPipe chunks of a pipeline
rank replicated over a data-parallel group included, which is why the training
strategies use it rather than a DDP or FSDP wrapper that must own the whole model.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


def all_reduce_grads(module: nn.Module, group: Optional[dist.ProcessGroup] = None) -> None:
    """Average every parameter's gradient over ``group`` (one flat all-reduce).

    A parameter no rank touched keeps ``grad = None``, as it would in one process (so
    AdamW skips it there too); one that only some ranks touched counts zero elsewhere.
    """
    reduce_param_grads([p for p in module.parameters() if p.requires_grad], group)


def reduce_param_grads(params: list[nn.Parameter], group: Optional[dist.ProcessGroup] = None,
                       divisor: Optional[int] = None) -> None:
    """Sum ``params``' gradients over ``group`` and divide by ``divisor`` (default: the
    group's size, an average); every rank of the group passes the same parameters in order."""
    if not params:
        return
    touched = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(touched, op=dist.ReduceOp.MAX, group=group)
    live = [p for p, t in zip(params, touched.tolist()) if t]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group) if divisor is None else divisor
    for p, g in zip(live, flat.split([p.numel() for p in live])):
        p.grad.copy_(g.view_as(p))
