"""What the user sees while work runs: one line per event, rich progress bars for long work.

A `Reporter` is made once per CLI invocation. On a terminal it draws rich progress bars
(description, bar, step/total, rate, ETA and live fields such as the loss); when output
is not a terminal (CI logs, pipes) or `--quiet` is given, bars are not drawn at all so
logs stay clean. Event lines (`info`) are printed unless quiet; warnings always are.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.markup import escape
from rich.text import Text


class _RateColumn(ProgressColumn):
    """Steps per second (or per minute when slow), with the task's unit."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if not speed:
            return Text(f"- {unit}/s", style="progress.data.speed")
        if speed < 1:
            return Text(f"{speed * 60:.1f} {unit}/min", style="progress.data.speed")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


class ProgressHandle:
    """Advance a bar and show live fields (`loss=2.31`) beside it."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._progress = progress
        self._task = task_id

    def advance(self, n: float = 1, **fields: float | str) -> None:
        if self._progress is None:
            return
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, fields_text=shown)

    def update(self, completed: float, **fields: float | str) -> None:
        if self._progress is None:
            return
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, completed=completed, fields_text=shown)


def _fmt(v: float | str) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.interactive = self.console.is_terminal and not quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    @contextmanager
    def progress(
        self, total: float | None, description: str, unit: str = "it", completed: float = 0
    ) -> Iterator[ProgressHandle]:
        if not self.interactive:
            yield ProgressHandle(None, None)
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[fields_text]}"),
        ]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(
                description, total=total, completed=completed, unit=unit, fields_text=""
            )
            yield ProgressHandle(progress, task_id)

