"""Training curves from metrics.jsonl, one line per artifact (`dsctl plot`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from dsctl.errors import UserError
from dsctl.pipeline.stage import METRICS_FILE

CURVES = ("lm_loss", "val_loss", "mtp_loss", "reward_mean", "accuracy", "groups_solved", "lr", "max_load_violation")
"""Panels in order; grpo logs reward_mean, accuracy (share of right samples) and
groups_solved (share of prompts with at least one right sample) every step."""


def read_metrics(path: Path) -> list[dict]:
    file = path / METRICS_FILE
    if not file.is_file():
        raise UserError(f"{path} has no {METRICS_FILE} to plot")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def panels(records: dict[str, list[dict]]) -> list[str]:
    """The CURVES that any run logged, in CURVES order: one panel each."""
    return [m for m in CURVES if any(m in r for recs in records.values() for r in recs)]


def plot_training_curves(runs: Sequence[tuple[str, Path]], out: Path) -> Path:
    """One panel per metric that any run logged, steps on x, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {label: read_metrics(path) for label, path in runs}
    present = panels(records)
    if not present:
        raise UserError(f"none of {', '.join(CURVES)} was logged by {', '.join(records)}")
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], present):
        for label, recs in records.items():
            points = [(r["step"], r[metric]) for r in recs if metric in r and "step" in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
