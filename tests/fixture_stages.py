"""Small stages used to exercise the runner and store (loaded via $DSCTL_PLUGINS)."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass

from dsctl.data.corpus import ReadStats, ShardWriter, corpus_files, iter_rows
from dsctl.pipeline.stage import Input, StageContext, StageSpec


@dataclass
class NumbersConfig:
    count: int = 20
    """How many rows to write."""
    prefix: str = "row"
    """Text prefix of each row."""


def _numbers(ctx: StageContext) -> dict:
    rng = random.Random(ctx.seed)
    with ShardWriter(ctx.out / "data", rows_per_shard=7) as out:
        for i in range(ctx.config.count):
            out.write({"id": str(i), "text": f"{ctx.config.prefix} {i} {rng.random():.6f}"})
    return {"rows": ctx.config.count}


NUMBERS = StageSpec("t_numbers", 1, NumbersConfig, _numbers, "corpus", help="Write numbered rows.")


@dataclass
class UpperConfig:
    suffix: str = ""
    """Appended to every row."""
    fail: bool = False
    """Raise instead of finishing (to test failure handling)."""


def _upper(ctx: StageContext) -> dict:
    if ctx.config.fail:
        raise RuntimeError("asked to fail")
    stats = ReadStats()
    with ShardWriter(ctx.out / "data") as out:
        for row in iter_rows(corpus_files(ctx.input("corpus").path), stats):
            out.write({**row, "text": row["text"].upper() + ctx.config.suffix})
    return {"rows": stats.rows}


UPPER = StageSpec("t_upper", 1, UpperConfig, _upper, "corpus", inputs={"corpus": Input("corpus")},
                  help="Uppercase every row.")


@dataclass
class SlowConfig:
    steps: int = 30
    """Steps to take; each appends a line and records progress."""
    sleep: float = 0.05
    """Seconds per step, so a test can kill the process mid-way."""


def _slow(ctx: StageContext) -> dict:
    """A resumable stage: each step's result depends on all earlier ones (a hash chain)."""
    state = ctx.load_state() or {"step": 0, "value": ctx.seed}
    lines_path = ctx.scratch / "lines.jsonl"
    # Keep exactly the lines of finished steps: a kill can land between the append and
    # the state save, and a resumed run must not see that half-recorded step twice.
    lines = lines_path.read_text().splitlines()[: state["step"]] if lines_path.exists() else []
    lines_path.write_text("".join(line + "\n" for line in lines))
    with open(lines_path, "a") as fh:
        for step in range(state["step"], ctx.config.steps):
            time.sleep(ctx.config.sleep)
            state = {"step": step + 1, "value": (state["value"] * 31 + step) % 1_000_003}
            fh.write(json.dumps(state) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            ctx.save_state(state)
    (ctx.out / "result.txt").write_text(lines_path.read_text())
    return {"value": state["value"]}


SLOW = StageSpec("t_slow", 1, SlowConfig, _slow, "report", inputs={"corpus": Input("corpus", optional=True)},
                 help="Count slowly, resumably.")

@dataclass
class CurveConfig:
    steps: int = 5
    """Steps to log."""


def _curve(ctx: StageContext) -> dict:
    for step in range(1, ctx.config.steps + 1):
        ctx.log(step=step, lm_loss=5.0 / step, lr=1e-3)
    return {"final_loss": 5.0 / ctx.config.steps}


CURVE = StageSpec("t_curve", 1, CurveConfig, _curve, "checkpoint", help="Log a falling loss curve.")

STAGES = [NUMBERS, UPPER, SLOW, CURVE]
