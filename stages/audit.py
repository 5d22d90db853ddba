"""audit: measure clean and dedup against the default world's planted dirt.

Reads corpus artifacts (e.g. the outputs of clean and dedup) that carry `planted.jsonl`
and writes a report: per stage, what was removed, junk precision/recall for filters,
near-duplicate precision/recall and exact-duplicate recall for dedup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsctl.files import write_json_atomic
from dsctl.pipeline.stage import Input, StageContext, StageSpec


@dataclass
class AuditConfig:
    show: bool = True
    """Print the measurements as a table when the stage runs."""


def run(ctx: StageContext) -> dict[str, Any]:
    from dsctl.data.audit import audit_corpus

    report: dict[str, Any] = {}
    for artifact in ctx.inputs_of("corpus"):
        label = Path(artifact.label.split(":")[-1]).name  # "mini_r1:clean" or a directory path
        measured = audit_corpus(artifact.path, artifact.manifest)
        if measured is None:
            ctx.warn(f"{artifact.label} has no planted.jsonl; nothing to measure")
            continue
        report[label] = measured
        if ctx.config.show:
            shown = {k: v for k, v in measured.items() if isinstance(v, float)}
            ctx.info(f"{label}: removed {measured['removed']} of {measured['input_rows']}; "
                     + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    write_json_atomic(ctx.out / "report.json", report)
    # rates first: the first metric is the stage's headline in `dsctl status`
    rates = {f"{label}_{k}": v for label, m in report.items() for k, v in m.items() if isinstance(v, float)}
    counts = {f"{label}_{k}": v for label, m in report.items() for k, v in m.items() if isinstance(v, int)}
    return {**rates, **counts}


STAGE = StageSpec(
    name="audit",
    version=1,
    config=AuditConfig,
    run=run,
    output="report",
    inputs={"corpus": Input("corpus", many=True, help="corpus artifacts carrying planted.jsonl")},
    help="Measure clean and dedup against the planted dirt of the default world: junk "
         "precision/recall, near-duplicate precision/recall, exact-duplicate recall.",
    example="dsctl audit --from mini_r1:clean --from mini_r1:dedup",
)
