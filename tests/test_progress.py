"""Progress off a terminal: a plain line every few seconds and a final count, nothing for
short work, nothing when quiet."""

from __future__ import annotations

import io

from rich.console import Console

from dsctl import progress as progress_module
from dsctl.progress import Reporter


def _reporter(quiet: bool = False) -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(quiet=quiet, console=Console(file=out, force_terminal=False, width=200)), out


def test_long_work_off_a_terminal_prints_throttled_progress_lines(monkeypatch):
    clock = iter(float(t) for t in range(0, 1000, 2))  # every call: 2 s later
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    reporter, out = _reporter()
    with reporter.progress(10, "pretrain", unit="step") as bar:
        for step in range(10):
            bar.advance(1, loss=3.0 - step / 10)
    lines = out.getvalue().splitlines()
    # A line at most every 5 s of 2-s steps, then the final count.
    assert 2 <= len(lines) <= 5
    assert lines[0].startswith("pretrain: ") and " step (" in lines[0] and "loss=" in lines[0]
    assert lines[-1].startswith("pretrain: 10/10 step (100%)")


def test_short_work_and_quiet_runs_print_nothing():
    reporter, out = _reporter()
    with reporter.progress(3, "write", unit="doc") as bar:
        bar.advance(3)
    quiet, quiet_out = _reporter(quiet=True)
    with quiet.progress(3, "write", unit="doc") as bar:
        bar.advance(3)
    assert out.getvalue() == "" and quiet_out.getvalue() == ""
