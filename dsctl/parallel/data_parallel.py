"""Data parallelism applied to a single-device model: DDP, FSDP2, or a plain gradient mean.

Every rank holds the model (DDP) or a shard of it (FSDP2 ``fully_shard``), runs its own
slice of the batch, and gradients are averaged across ranks, so one step over ``R``
ranks x ``b`` rows equals one single-process step over the concatenated ``R x b`` rows
when the loss is a mean over rows. Both wrappers work on CPU with gloo in torch 2.13
(FSDP2 turns parameters into DTensors; use ``p.full_tensor()`` to read a whole one).

``all_reduce_grads`` is the hand-rolled form for models that a wrapper cannot own,
e.g. the two DualPipe chunks of a pipeline rank replicated over a data-parallel group.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


class DataParallelMode(str, enum.Enum):
    """How to replicate a model over data-parallel ranks."""

    DDP = "ddp"
    """Full replica per rank, gradients all-reduced in buckets during backward."""
    FSDP = "fsdp"
    """FSDP2 ``fully_shard``: parameters, gradients and optimizer state sharded over ranks."""


def wrap_data_parallel(
    model: nn.Module,
    mode: DataParallelMode | str = DataParallelMode.DDP,
    group: Optional[dist.ProcessGroup] = None,
    shard_units: Optional[Iterable[nn.Module]] = None,
) -> nn.Module:
    """Wrap ``model`` for data parallelism over ``group`` (default: the whole world).

    For FSDP, each module in ``shard_units`` becomes its own all-gather unit (default:
    the children of ``model.layers`` when present, as torchtitan shards per block), then
    the root. Build the optimizer *after* wrapping: FSDP replaces the parameters.
    """
    if not dist.is_initialized():
        raise RuntimeError("data parallel needs torch.distributed; call dsctl.parallel.dist.init_distributed() "
                           "under torchrun first")
    mode = DataParallelMode(mode)
    device = next(model.parameters()).device
    if mode is DataParallelMode.DDP:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=group)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(group if group is not None else dist.group.WORLD, device.type)
    if shard_units is None:
        layers = getattr(model, "layers", None)
        shard_units = list(layers) if isinstance(layers, nn.ModuleList) else []
    for unit in shard_units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


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
