"""What the user sees while work runs: one line per event, rich progress bars for long work.

A `Reporter` is made once per CLI invocation. On a terminal it draws rich progress bars
(description, bar, step/total, rate, ETA and live fields such as the loss); when output
is not a terminal (CI logs, pipes, nohup, Slurm) long work prints a plain progress line
every few seconds instead of a bar; `--quiet` shows neither. Event lines (`info`) are
printed unless quiet; warnings always are.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
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


LINE_INTERVAL_S = 5.0
"""Off a terminal, seconds between two progress lines of one piece of work."""


class ProgressHandle:
    """Advance a bar and show live fields (`loss=2.31`) beside it. Off a terminal (logs
    under nohup, CI, Slurm) it prints a plain progress line instead, at most every
    `LINE_INTERVAL_S` seconds and once at the end; quiet, it does nothing."""

    def __init__(self, progress: Progress | None = None, task_id: int | None = None,
                 lines: "_ProgressLines | None" = None):
        self._progress = progress
        self._task = task_id
        self._lines = lines

    def advance(self, n: float = 1, **fields: float | str) -> None:
        if self._lines is not None:
            self._lines.move(n, None, fields)
        if self._progress is None:
            return
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, fields_text=shown)

    def update(self, completed: float, **fields: float | str) -> None:
        if self._lines is not None:
            self._lines.move(0, completed, fields)
        if self._progress is None:
            return
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, completed=completed, fields_text=shown)


class _ProgressLines:
    """`description: 120/300 step (40%)  3.2 step/s  loss=2.31`, throttled."""

    def __init__(self, console: Console, total: float | None, description: str, unit: str, completed: float):
        self.console, self.total, self.description, self.unit = console, total, description, unit
        self.completed = self.start_completed = completed
        self.started = self.last = time.monotonic()
        self.fields: dict[str, float | str] = {}
        self.printed = self.completed

    def move(self, n: float, completed: float | None, fields: dict[str, float | str]) -> None:
        self.completed = completed if completed is not None else self.completed + n
        self.fields = fields or self.fields
        now = time.monotonic()
        if now - self.last >= LINE_INTERVAL_S:
            self.last = now
            self.emit()

    def emit(self) -> None:
        self.printed = self.completed
        done = f"{self.completed:,.0f}" + (f"/{self.total:,.0f}" if self.total else "") + f" {self.unit}"
        if self.total:
            done += f" ({100 * self.completed / self.total:.0f}%)"
        elapsed = time.monotonic() - self.started
        rate = (self.completed - self.start_completed) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {done}", f"{rate:,.1f} {self.unit}/s"]
        parts += [f"{k}={_fmt(v)}" for k, v in self.fields.items()]
        self.console.print("  ".join(parts), highlight=False, markup=False)

    def close(self) -> None:
        # Work that lasted long enough for a line ends with its final count; short work,
        # which printed nothing, stays silent.
        if self.last != self.started and self.completed != self.printed:
            self.emit()


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
        if self.quiet:
            yield ProgressHandle()
            return
        if not self.interactive:
            lines = _ProgressLines(self.console, total, description, unit, completed)
            try:
                yield ProgressHandle(lines=lines)
            finally:
                lines.close()
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

