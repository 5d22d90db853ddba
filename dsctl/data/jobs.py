"""Resumable data jobs: a step of a data stage as numbered tasks with completion markers.
(`dsctl.tasks` is something else: the reasoning problems.)

A task is a frozen dataclass (a `Task`: picklable, so a process pool or Ray ships it)
whose `index` is its number within the step; its function writes whatever files it
produces (under temporary names, renamed into place) and returns a small JSON-able
summary. The worker that ran it then writes the summary as the task's marker,
`<work>/done/<step>-<index>.json`, so a task counts as finished only once its files are
in place. A rerun after a crash or kill (of a worker, the driver, or the machine) runs
only the tasks without a marker and reads the others' summaries back, which is how every
data stage resumes from its finished shards, locally and on Ray, as datatrove's
completion files do.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dsctl.data.executor import Executor
from dsctl.files import write_json_atomic

Progress = Callable[[str, int, int], None]
"""(step, tasks done, tasks in the step)."""


class Task(Protocol):
    """What `run_tasks` needs of a task: a frozen dataclass whose `index` is its number
    within the step (an input shard's number, for a task per shard), which names its
    marker; the other fields are the task's own."""

    @property
    def index(self) -> int: ...


def marker(work: Path, step: str, number: int) -> Path:
    return work / "done" / f"{step}-{number:05d}.json"


def _recorded(job: tuple[Callable[[Any], Any], str, Task]) -> Any:
    """Run one task, then write its marker (in the worker, so a finished task stays
    finished even if the driver dies before it hears back)."""
    fn, path, task = job
    result = fn(task)
    write_json_atomic(Path(path), result)
    return result


def run_tasks(executor: Executor, work: Path, step: str, fn: Callable[[Any], Any], tasks: Sequence[Task],
              progress: Progress | None = None) -> list[Any]:
    """Every task's summary, in task order; tasks with a marker are not run again."""
    results: dict[int, Any] = {}
    todo = []
    for task in tasks:
        done = marker(work, step, task.index)
        if done.exists():
            results[task.index] = json.loads(done.read_text())
        else:
            todo.append(task)
    if progress:
        progress(step, len(results), len(tasks))
    jobs = [(fn, str(marker(work, step, task.index)), task) for task in todo]
    for task, result in zip(todo, executor.map(_recorded, jobs)):
        results[task.index] = result
        if progress:
            progress(step, len(results), len(tasks))
    return [results[task.index] for task in tasks]


class StepBars(contextlib.ExitStack):
    """`progress` for `run_tasks` in a stage: one bar per step (tasks done of the step's
    tasks), each closed when the next step starts. `ctx` is the stage's StageContext."""

    def __init__(self, ctx: Any) -> None:
        super().__init__()
        self.ctx, self.step, self.bar = ctx, None, None

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self.step:
            self.close()
            self.bar = self.enter_context(self.ctx.progress(total, step, unit="task"))
            self.step = step
        self.bar.update(done)
