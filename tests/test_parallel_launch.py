"""torchrun-style init and the local launcher: env handling, failure reports, time limits."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist

from dsctl.parallel.dist import DistInfo, init_distributed
from dsctl.parallel.launch import spawn_workers


def test_init_without_torchrun_env_is_a_world_of_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.backend) == (0, 1, None) and not dist.is_initialized()


def test_init_with_partial_torchrun_env_names_the_missing_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for var in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match=r"missing environment variables \['LOCAL_RANK', 'MASTER_ADDR'"):
        init_distributed()


def _fail_on_rank1_or_hang(info: DistInfo, hang: bool) -> int:
    if hang:
        time.sleep(120)
    if info.rank == 1:
        raise ValueError("rank one is broken")
    dist.barrier()  # rank 0 would wait here forever without the launcher's clean-up
    return info.rank


def test_spawn_workers_surfaces_a_failing_rank_and_stops_the_others():
    with pytest.raises(RuntimeError, match="(?s)rank1 failed first.*rank one is broken"):
        spawn_workers(_fail_on_rank1_or_hang, 2, False, timeout_s=60)


def test_spawn_workers_terminates_a_job_that_outlives_its_timeout():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish in time"):
        spawn_workers(_fail_on_rank1_or_hang, 1, True, timeout_s=5)
    assert time.monotonic() - start < 30
