"""One recipe at several training seeds: the two kinds of error, side by side.

A paired difference from one eval report (± its SE) says how sure we are *given that
training run*: the error of sampling problems. Training itself varies: another seed
draws another initialization, data order and sampling, and the difference moves more
than its SE suggests. `combine` puts each comparison's per-seed difference ± paired SE
beside the mean ± SD over seeds, so a claim can name both.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

STUDY_JSON, STUDY_MD, STUDY_PNG = "study.json", "study.md", "study.png"


def _spread(values: Sequence[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": round(statistics.fmean(values), 4), "sd": round(sd, 4)}


def combine(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-seed eval reports (seed -> report.json) -> one study: every checkpoint metric
    and every comparison with its per-seed values and the mean ± SD over seeds."""
    seeds = sorted(reports)
    labels = list(reports[seeds[0]]["metrics"])
    metrics = {}
    for label in labels:
        names = reports[seeds[0]]["metrics"][label]
        metrics[label] = {
            name: {"per_seed": [reports[s]["metrics"][label][name] for s in seeds],
                   **_spread([reports[s]["metrics"][label][name] for s in seeds])}
            for name in names if isinstance(names[name], (int, float))
        }
    comparisons = []
    for i, row in enumerate(reports[seeds[0]]["comparisons"]):
        rows = [reports[s]["comparisons"][i] for s in seeds]
        comparisons.append({
            "from": row["from"], "to": row["to"], "metric": row["metric"], "problems": row["problems"],
            "per_seed": [{"seed": s, "difference": r["difference"], "stderr": r["stderr"]}
                         for s, r in zip(seeds, rows)],
            **_spread([r["difference"] for r in rows]),
        })
    return {"seeds": seeds, "metrics": metrics, "comparisons": comparisons}


def comparison_cell(row: dict[str, Any]) -> str:
    return f"{row['mean']:+.3f} ± {row['sd']:.3f}"


def markdown(study: dict[str, Any], title: str) -> str:
    seeds = study["seeds"]
    lines = [f"# {title}: {len(seeds)} training seeds ({', '.join(map(str, seeds))})", "",
             "Paired differences on the same test problems: each seed's difference ± its paired SE "
             "(problem sampling), then the mean ± SD over seeds (training variation).", "",
             "| comparison | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± SD over seeds |",
             "|---|---|" + "---:|" * (len(seeds) + 1)]
    for row in study["comparisons"]:
        cells = [f"{r['difference']:+.3f} ± {r['stderr']:.3f}" for r in row["per_seed"]]
        lines.append(f"| {row['to']} − {row['from']} | {row['metric']} | " + " | ".join(cells)
                     + f" | {comparison_cell(row)} |")
    lines += ["", "Every checkpoint (mean ± SD over seeds):", "",
              "| metric | " + " | ".join(study["metrics"]) + " |", "|---|" + "---:|" * len(study["metrics"])]
    names = list(next(iter(study["metrics"].values())))
    for name in names:
        cells = [f"{m[name]['mean']:.3f} ± {m[name]['sd']:.3f}" if name in m else "" for m in study["metrics"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(study: dict[str, Any], out: Path, title: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / STUDY_JSON).write_text(json.dumps(study, indent=2) + "\n")
    (out / STUDY_MD).write_text(markdown(study, title))
    written = [out / STUDY_JSON, out / STUDY_MD]
    if plot(study, out / STUDY_PNG, title) is not None:
        written.append(out / STUDY_PNG)
    return written


def plot(study: dict[str, Any], path: Path, title: str) -> Path | None:
    """One bar per comparison (pass@1): the mean over seeds with its SD, and each seed's
    difference as a dot with its paired SE. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in study["comparisons"] if r["metric"] == "pass@1"] or study["comparisons"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows)), 3.6))
    xs = range(len(rows))
    ax.bar(xs, [r["mean"] for r in rows], yerr=[0 if r["sd"] != r["sd"] else r["sd"] for r in rows],
           color="#9bb7d4", capsize=4, label="mean ± SD over seeds")
    for x, row in zip(xs, rows):
        n = len(row["per_seed"])
        for j, r in enumerate(row["per_seed"]):
            ax.errorbar(x + (j - (n - 1) / 2) * 0.12, r["difference"], yerr=r["stderr"], fmt="o", color="#1f3b5c",
                        markersize=3, capsize=2, label="a seed ± paired SE" if x == 0 and j == 0 else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [f"{r['to']}\n− {r['from']}" for r in rows], fontsize=8)
    ax.set_ylabel(rows[0]["metric"] if rows else "")
    ax.set_title(f"{title}: seeds {', '.join(map(str, study['seeds']))}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
