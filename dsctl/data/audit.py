"""Measure a data stage against the planted dirt of the default world.

The `source` stage's default world records every dirty row it planted in `planted.jsonl`,
and every corpus stage carries that file through. The stages never read it; this module
does, afterwards, to turn a stage's decisions (rows kept in `data/`, rows set aside in
`rejected/` with a reason) into precision and recall:

- filter stages (clean): did they remove the planted junk, boilerplate, short and
  non-English rows (recall), and were their removals planted dirt (precision)?
- dedup: near-duplicate precision/recall and exact-duplicate recall via
  `dedup.planted_quality`, with the stage's own Jaccard threshold.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from dsctl.data.corpus import corpus_files
from dsctl.data.dedup import planted_quality, read_decisions

FILTER_KINDS = ("junk", "boilerplate", "short", "non_english")
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")


def read_planted(root: Path) -> dict[str, dict[str, Any]] | None:
    path = root / "planted.jsonl"
    if not path.is_file():
        return None
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {row["id"]: row for row in rows}


def audit_corpus(root: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Precision/recall of one corpus artifact's removals; None without planted.jsonl."""
    planted = read_planted(root)
    if planted is None:
        return None
    decisions = read_decisions(corpus_files(root, "data"), corpus_files(root, "rejected"))
    removed = {doc_id: reason for doc_id, d in decisions.items() if d for reason in [d[0]]}
    by_kind = Counter(planted[d]["kind"] for d in removed if d in planted)
    result: dict[str, Any] = {"input_rows": len(decisions), "removed": len(removed),
                              "removed_planted_by_kind": dict(sorted(by_kind.items()))}
    if any(reason in DUPLICATE_REASONS for reason in removed.values()):
        threshold = float(manifest.get("config", {}).get("threshold", 0.8))
        quality = planted_quality(planted, decisions, threshold)
        result.update({f"near_dup_{k}": v for k, v in quality.items() if k in ("precision", "recall")},
                      exact_dup_recall=quality["exact_dup_recall"], near_dup_expected=quality["expected_merges"])
    else:
        dirty = {d for d in decisions if planted.get(d, {}).get("kind") in FILTER_KINDS}
        hits = len(dirty & set(removed))
        result.update(junk_precision=hits / len(removed) if removed else 1.0,
                      junk_recall=hits / len(dirty) if dirty else 1.0, junk_present=len(dirty))
    return result
