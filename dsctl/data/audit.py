"""Measure a data stage against the planted dirt of the default world.

The `source` stage's default world records every dirty row it planted in `planted.jsonl`,
and every corpus stage carries that file through. The stages never read it; this module
does, afterwards, to turn a stage's decisions (rows kept in `data/`, rows set aside in
`rejected/` with a reason) into precision and recall:

- filter stages (clean): did they remove the planted junk, boilerplate, short and
  non-English rows (recall), and were their removals planted dirt (precision)?
- dedup: near-duplicate precision/recall and exact-duplicate recall
  (`planted_quality`, below), with the stage's own Jaccard threshold.

`planted_quality` and `read_decisions` work on any dedup output and any planted
sidecar, not only the default world's (benchmarks/bench_dedup.py uses them on its own
synthetic corpus).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from dsctl.data.corpus import ReadStats, corpus_files, iter_rows
from dsctl.data.minhash import jaccard, shingle_set
from dsctl.files import write_bytes_atomic

FILTER_KINDS = ("junk", "boilerplate", "short", "non_english")
DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")


def carry_planted(source: Path, out: Path) -> None:
    """Copy the input corpus's planted.jsonl, if it has one, into the stage's output `out`
    unchanged (every corpus stage does, so the audit can read it downstream)."""
    path = source / "planted.jsonl"
    if path.is_file():
        write_bytes_atomic(out / "planted.jsonl", path.read_bytes())


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


# -- dedup against planted duplicates ------------------------------------------------------


def planted_quality(
    planted: dict[str, dict[str, Any]],
    decisions: dict[str, tuple[str, str] | None],
    threshold: float,
    texts: dict[str, str] | None = None,
) -> dict[str, float]:
    """Precision/recall of near-duplicate removal against a planted sidecar.

    `planted`: id -> planted.jsonl row; `decisions`: every input id -> None if kept, else
    (reason, duplicate_of) it was rejected with. Ground truth:

    - A *family* is an original and every planted copy of it (following `of`).
    - Expected merges: planted near_dup rows whose recorded true Jaccard is >= threshold
      and whose original is present in the input. A merge is found when the copy and
      its original were not both kept (either may survive: the one first in input order
      does). Recall = found / expected. A planted near-dup *below* the threshold is not
      expected to be removed; if it is (it can be legitimately merged through another
      member of its family), it is neither a hit nor a miss, and is counted separately.
    - Precision = share of "near_duplicate" removals whose survivor is in the removed
      row's own family: removing a document for resembling an unrelated one is the error.
      Real corpora also hold duplicates nobody planted (templated junk, repeated
      docstrings); with `texts` given, `precision_true_jaccard` also counts a removal as
      correct when its true shingle Jaccard with its survivor is >= threshold.
    """

    def root(doc_id: str) -> str:
        seen = set()
        while doc_id in planted and planted[doc_id].get("of") and doc_id not in seen:
            seen.add(doc_id)
            doc_id = planted[doc_id]["of"]
        return doc_id

    def found(kind: str, min_jaccard: float) -> tuple[int, int]:
        pairs = [
            (doc_id, row["of"])
            for doc_id, row in planted.items()
            if row.get("kind") == kind and row.get("jaccard", 1.0) >= min_jaccard
            and doc_id in decisions and row.get("of") in decisions
        ]
        return sum(1 for a, b in pairs if decisions[a] or decisions[b]), len(pairs)

    near_hits, near_expected = found("near_dup", threshold)
    exact_hits, exact_expected = found("exact_dup", 0.0)
    near_removed = [(d, dec[1]) for d, dec in decisions.items() if dec and dec[0] == "near_duplicate"]
    correct = sum(1 for d, of in near_removed if root(d) == root(of))
    true_near = correct
    if texts is not None:
        true_near += sum(
            1
            for d, of in near_removed
            if root(d) != root(of) and jaccard(shingle_set(texts[d]), shingle_set(texts[of])) >= threshold
        )
    below = sum(
        1
        for d, row in planted.items()
        if row.get("kind") == "near_dup" and row.get("jaccard", 1.0) < threshold and decisions.get(d)
    )
    return {
        "recall": near_hits / near_expected if near_expected else 1.0,
        "precision": correct / len(near_removed) if near_removed else 1.0,
        **({"precision_true_jaccard": true_near / len(near_removed) if near_removed else 1.0} if texts else {}),
        "expected_merges": near_expected,
        "near_removals": len(near_removed),
        "below_threshold_removed": below,
        "exact_dup_recall": exact_hits / exact_expected if exact_expected else 1.0,
    }


def read_decisions(kept_files: list[Path], rejected_files: list[Path]) -> dict[str, tuple[str, str] | None]:
    """id -> None (kept) or (reason, duplicate_of), from a dedup output's data/ and rejected/."""
    decisions: dict[str, tuple[str, str] | None] = {}
    stats = ReadStats()
    for row in iter_rows(kept_files, stats):
        decisions[str(row["id"])] = None
    for row in iter_rows(rejected_files, stats):
        decisions[str(row["id"])] = (row["reason"], row.get("duplicate_of", ""))
    return decisions
