"""torch.distributed setup from ``torchrun``'s environment, and teardown.

``torchrun`` (or :func:`dsctl.parallel.launch.spawn_workers` in tests) sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them the
process runs as a world of one and nothing is initialised, so the same training code
works under ``python`` and under ``torchrun``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dsctl.parallel.pipeline import LinkGroups

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank, 0 .. world_size-1."""
    world_size: int = 1
    """Number of processes in the job."""
    local_rank: int = 0
    """Rank on this node; selects the GPU."""
    device: torch.device = torch.device("cpu")
    """``cuda:<local_rank>`` when the job runs on GPUs (NCCL), else cpu (gloo)."""
    backend: str | None = None
    """"nccl" or "gloo"; None for a single process that initialised nothing."""

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def init_distributed(backend: str | None = None, timeout_s: float = 300.0) -> DistInfo:
    """Initialise the default process group from torchrun's environment variables.

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise. Returns a
    world of one (without initialising anything) when ``WORLD_SIZE`` is unset or 1 and
    no group exists. Calling it again after initialisation returns the same info.
    """
    if "WORLD_SIZE" not in os.environ or (_env_int("WORLD_SIZE") == 1 and not dist.is_initialized()):
        return DistInfo()
    missing = [v for v in _ENV_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"distributed launch is missing environment variables {missing}; "
                           "start the job with `torchrun --nproc-per-node N ...`")
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    use_cuda = torch.cuda.is_available() if backend is None else backend == "nccl"
    backend = backend or ("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s),
                                device_id=device if use_cuda else None)
    return DistInfo(rank, world, local_rank, device, backend)


def teardown() -> None:
    """Destroy the default process group if one exists (safe to call twice)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed(backend: str | None = None, timeout_s: float = 300.0) -> Iterator[DistInfo]:
    """``with distributed() as info:`` — init from the environment, always tear down."""
    info = init_distributed(backend, timeout_s)
    try:
        yield info
    finally:
        teardown()


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_rank0() -> bool:
    return get_rank() == 0


@dataclass(frozen=True)
class ParallelGroups:
    """Process groups of a data x pipeline layout (torchtitan-style device mesh)."""

    pp: dist.ProcessGroup
    """This rank's pipeline: ``pp_size`` consecutive ranks (neighbours talk most)."""
    dp: dist.ProcessGroup
    """Ranks holding the same pipeline stage(s) in each replica; gradients average here."""
    pp_rank: int
    """Position in the pipeline."""
    dp_rank: int
    """Which data-parallel replica this rank belongs to (selects its slice of the batch)."""
    links: LinkGroups
    """Per-direction point-to-point groups of this rank's pipeline (pass to DualPipe/OneF1B)."""


def pipeline_data_groups(pp_size: int, device_type: str = "cpu") -> ParallelGroups:
    """Split the world into ``world / pp_size`` pipeline replicas (every rank must call it).

    Rank ``r`` sits at pipeline position ``r % pp_size`` of replica ``r // pp_size``;
    keeping a pipeline on consecutive ranks keeps its point-to-point traffic inside a node.
    """
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if pp_size < 1 or world % pp_size:
        raise ValueError(f"pipeline size {pp_size} must divide the world size {world}")
    mesh = init_device_mesh(device_type, (world // pp_size, pp_size), mesh_dim_names=("dp", "pp"))
    links = None
    for replica in range(world // pp_size):  # new_group is collective: all ranks create all
        ranks = list(range(replica * pp_size, (replica + 1) * pp_size))
        pair = LinkGroups(dist.new_group(ranks), dist.new_group(ranks))
        if dist.get_rank() in ranks:
            links = pair
    assert links is not None
    return ParallelGroups(pp=mesh.get_group("pp"), dp=mesh.get_group("dp"), pp_rank=mesh.get_local_rank("pp"),
                          dp_rank=mesh.get_local_rank("dp"), links=links)
