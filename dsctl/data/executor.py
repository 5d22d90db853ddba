"""Where a data step's tasks run: processes on this machine, or Ray tasks on a cluster.

A step is a list of independent tasks (one per input shard, LSH band range, ...), each a
picklable module-level function applied to one small argument; what a task produces it
writes to files, and its result is a small summary. `Executor.map` runs the tasks and
yields results in task order, so a step's output cannot depend on where or in what order
the tasks ran: the local executor and Ray give the same bytes.

    with open_executor("ray", ray_address="", workers=2) as ex:
        for summary in ex.map(task_fn, tasks): ...

`ray_address=""` starts a local Ray for the run (and stops it after); `"auto"` joins the
cluster this machine belongs to, `"host:port"` a given one.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from dsctl.data.config import DataWorkConfig
from dsctl.data.shards import ordered_map
from dsctl.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Results of `fn(task)` in task order, with a bounded number of tasks in flight."""


class LocalExecutor:
    """A process pool on this machine (`workers <= 1`: in this process)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        return ordered_map(fn, tasks, self.workers)


class RayExecutor:
    """Each task a Ray task; at most `in_flight` submitted ahead of the consumer."""

    def __init__(self, ray: Any, in_flight: int) -> None:
        self.ray, self.in_flight = ray, in_flight
        self._remote: dict[Callable, Any] = {}

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        remote = self._remote.setdefault(fn, self.ray.remote(fn))
        pending: deque = deque()
        for task in tasks:
            pending.append(remote.remote(task))
            if len(pending) >= self.in_flight:
                yield self.ray.get(pending.popleft())
        while pending:
            yield self.ray.get(pending.popleft())


def executor_for(work: DataWorkConfig) -> contextlib.AbstractContextManager[Executor]:
    """The executor a data stage's config asks for (`workers` 0: one per CPU core)."""
    return open_executor(work.executor, workers=work.workers or os.cpu_count() or 1, ray_address=work.ray_address)


@contextlib.contextmanager
def open_executor(kind: str, *, workers: int, ray_address: str = "") -> Iterator[Executor]:
    if kind == "local":
        yield LocalExecutor(workers)
        return
    if kind != "ray":
        raise UserError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    try:
        import ray
    except ImportError:
        raise UserError("executor = \"ray\" needs Ray: pip install 'dsctl[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:  # a local Ray for this run, sized like the local executor
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        cpus = int(ray.cluster_resources().get("CPU", workers))
        yield RayExecutor(ray, in_flight=2 * max(cpus, 1))
    finally:
        if started_here:
            ray.shutdown()
