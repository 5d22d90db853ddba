"""The eval report: report.json, a Markdown table, a rich table, and a PNG.

report.json:

    {"metrics":  {"sft": {"greedy": 0.41, "pass@1": 0.37, ...}, "grpo": {...}},
     "settings": {... the eval config ..., "checkpoints": {"sft": {"ref": "mini_r1:sft", "key": "…"}}},
     "details":  {"sft": {"passkey@1024": {"by_depth": [...]}, ...}}}

`metrics` maps a checkpoint label to metric name to a number; the table and the plot
show exactly that. `plot_report_files` draws one picture from several report.json files
(for `dsctl plot KEY...`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsctl.errors import UserError

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def ordered_metrics(metrics: dict[str, dict[str, float]]) -> list[str]:
    """Every metric name, in first-seen order across checkpoints."""
    names: list[str] = []
    for values in metrics.values():
        names.extend(n for n in values if n not in names)
    return names


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def markdown_table(metrics: dict[str, dict[str, float]]) -> str:
    """Metrics as rows, checkpoints as columns (checkpoints are few, metrics many)."""
    labels = list(metrics)
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in ordered_metrics(metrics):
        lines.append(f"| {name} | " + " | ".join(_cell(metrics[c].get(name)) for c in labels) + " |")
    return "\n".join(lines) + "\n"


def rich_table(metrics: dict[str, dict[str, float]], title: str = "eval"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for label in metrics:
        table.add_column(label, justify="right")
    for name in ordered_metrics(metrics):
        table.add_row(name, *(_cell(metrics[c].get(name)) for c in metrics))
    return table


def comparison_line(row: dict[str, Any]) -> str:
    """"grpo − sft  pass@1 +0.042 ± 0.020 (paired SE, 48 problems)"."""
    return (f"{row['to']} − {row['from']}  {row['metric']} {row['difference']:+.3f} ± {row['stderr']:.3f} "
            f"(paired SE, {row['problems']} problems)")


EXAMPLES = 3
"""Problems whose greedy completions report.md shows for every checkpoint."""


def examples_markdown(details: dict[str, Any], n: int = EXAMPLES, width: int = 400) -> str:
    """The first `n` task problems with each checkpoint's greedy completion: what a
    number in the table looks like as text."""
    records = {label: d["task_scores"] for label, d in details.items() if isinstance(d, dict) and d.get("task_scores")}
    if not records:
        return ""
    first = next(iter(records.values()))
    lines = ["\n## Examples (greedy)"]
    for i, problem in enumerate(first[:n]):
        lines.append(f"\n**{problem['prompt']}** (answer {problem['answer']})\n")
        for label, rows in records.items():
            text = rows[i]["greedy_text"].replace("\n", " ").replace("`", "'")
            text = text if len(text) <= width else text[:width] + "…"
            mark = "✓" if rows[i]["greedy"] else "✗"
            lines.append(f"- {label} {mark} `{text}`")
    return "\n".join(lines) + "\n"


def write_report(out: Path, metrics: dict[str, dict[str, float]], settings: dict[str, Any],
                 details: dict[str, Any] | None = None, title: str = "eval",
                 comparisons: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write report.json, report.md and (when matplotlib is installed) report.png.

    `comparisons` are paired differences between checkpoints
    (`task_accuracy.paired_comparisons`); they go into both the JSON and the Markdown.
    """
    report = {"metrics": metrics, "comparisons": comparisons or [], "settings": settings, "details": details or {}}
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    markdown = f"# {title}\n\n" + markdown_table(metrics)
    if comparisons:
        markdown += "\nPaired differences on the same problems (a gain under ~2 SE is not established):\n\n"
        markdown += "".join(f"- {comparison_line(row)}\n" for row in comparisons)
    markdown += examples_markdown(details or {})
    (out / REPORT_MD).write_text(markdown)
    written = [out / REPORT_JSON, out / REPORT_MD]
    if plot_metrics(metrics, out / REPORT_PNG, title) is not None:
        written.append(out / REPORT_PNG)
    return written


def plot_metrics(metrics: dict[str, dict[str, float]], path: Path, title: str = "eval") -> Path | None:
    """One bar panel per metric, one bar per checkpoint; None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    names = [n for n in ordered_metrics(metrics)
             if any(isinstance(metrics[c].get(n), (int, float)) for c in metrics)]
    if not names:
        return None
    labels = list(metrics)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(labels))]
    for ax, name in zip(axes.flat, names):
        values = [metrics[c].get(name) for c in labels]
        heights = [v if isinstance(v, (int, float)) and not math.isnan(v) else 0.0 for v in values]
        bars = ax.bar(range(len(labels)), heights, color=colors)
        for bar, v in zip(bars, values):
            ax.annotate(_cell(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.margins(y=0.18)  # room for the value labels above the bars
        if min(heights) >= 0:
            ax.set_ylim(bottom=0, top=None if max(heights) > 0 else 1)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_report(path: Path) -> dict[str, Any]:
    """A report.json, from its file or the report artifact directory holding it."""
    path = Path(path)
    file = path / REPORT_JSON if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path} is not an eval report: no {REPORT_JSON}")
    report = json.loads(file.read_text())
    if not isinstance(report.get("metrics"), dict):
        raise UserError(f"{file} has no 'metrics' table; is it an eval report?")
    return report


def merge_reports(reports: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """(name, report) pairs -> one metrics table; labels that clash get "name/" prefixed."""
    seen: dict[str, int] = {}
    for _, report in reports:
        for label in report["metrics"]:
            seen[label] = seen.get(label, 0) + 1
    merged: dict[str, dict[str, float]] = {}
    for name, report in reports:
        for label, values in report["metrics"].items():
            merged[f"{name}/{label}" if seen[label] > 1 else label] = values
    return merged


def plot_report_files(paths: Sequence[Path], out: Path, names: Sequence[str] | None = None,
                      title: str = "eval") -> Path:
    """Draw the checkpoints of several eval reports side by side into `out` (a PNG).

    `names` (one per report, e.g. the keys the user typed) prefix clashing labels.
    """
    names = list(names) if names is not None else [Path(p).name for p in paths]
    merged = merge_reports([(n, load_report(p)) for n, p in zip(names, paths)])
    if plot_metrics(merged, Path(out), title) is None:
        raise UserError("plotting needs matplotlib: pip install matplotlib")
    return Path(out)
