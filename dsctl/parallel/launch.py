"""Start a small local gloo job from Python (tests, benchmarks), like ``torchrun`` would.

``spawn_workers(fn, world_size, *args)`` starts ``world_size`` fresh processes with
torchrun's environment variables and a free port, runs ``fn(info, *args)`` in each
after :func:`~dsctl.parallel.dist.init_distributed`, and returns each rank's result.
Workers that fail bring the whole job down with the failing rank's traceback; a job
that outlives ``timeout_s`` is terminated, so a hung collective never hangs the caller.
Results travel back through ``torch.save`` files and are loaded with
``weights_only=True``: return tensors, numbers, strings and lists/dicts of them.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from dsctl.parallel.dist import DistInfo, init_distributed, teardown


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    # Several ranks share few cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    out = Path(out_dir)
    try:
        info = init_distributed(backend="gloo", timeout_s=60)
        result = fn(info, *args)
        torch.save({"result": result}, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        teardown()


def spawn_workers(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0) -> list[Any]:
    """Run ``fn(info: DistInfo, *args)`` on ``world_size`` gloo ranks; returns results by rank.

    ``fn`` must be importable (a module-level function) because workers are spawned.
    Raises ``RuntimeError`` with the first failing rank's traceback, ``TimeoutError``
    if the job is not done after ``timeout_s`` seconds (all workers are then stopped).
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="dsctl-spawn-") as out_dir:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, world_size, port, out_dir, fn, args), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            _wait(procs, deadline, Path(out_dir))
        finally:
            _stop(procs)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True)["result"] for r in range(world_size)]


def _wait(procs: list, deadline: float, out_dir: Path) -> None:
    while any(p.is_alive() for p in procs):
        _raise_failure(out_dir)
        if time.monotonic() > deadline:
            raise TimeoutError(f"distributed job did not finish in time; ranks still running: "
                               f"{[i for i, p in enumerate(procs) if p.is_alive()]}")
        time.sleep(0.05)
    _raise_failure(out_dir)
    bad = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"workers {bad} exited with codes {[procs[i].exitcode for i in bad]}")


def _raise_failure(out_dir: Path) -> None:
    """Raise with the first rank to fail: the others usually only lost their peer."""
    errors = sorted(out_dir.glob("rank*.err"), key=lambda f: f.stat().st_mtime)
    if errors:
        others = f" (later also failed: {', '.join(e.stem for e in errors[1:])})" if errors[1:] else ""
        raise RuntimeError(f"worker {errors[0].stem} failed first{others}:\n{errors[0].read_text()}")


def _stop(procs: list) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()


__all__ = ["DistInfo", "free_port", "spawn_workers"]
