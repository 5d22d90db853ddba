"""torchrun-style init and the local launcher: env handling, failure reports, time limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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



def _torchrun_demo(schedule: str, nproc: int, steps: int) -> list[float]:
    # torchrun from the same venv, standalone rendezvous on localhost (the README command)
    torchrun = Path(sys.executable).with_name("torchrun")
    demo = Path(__file__).resolve().parents[1] / "examples" / "pipeline_demo.py"
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", str(demo),
           "--schedule", schedule, "--steps", str(steps), "--batch-size", "8", "--seq-len", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line)["loss"] for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow  # ~15-20 s: two interpreters importing torch and the model under torchrun
def test_torchrun_launch_of_dualpipe_demo_trains():
    losses = _torchrun_demo("dualpipe", 2, 3)
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]


@pytest.mark.slow
def test_dualpipe_and_1f1b_follow_the_same_loss_curve_under_torchrun():
    dual, onef1b = _torchrun_demo("dualpipe", 4, 3), _torchrun_demo("1f1b", 4, 3)
    assert dual == pytest.approx(onef1b, rel=1e-4)
