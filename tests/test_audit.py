import json

import pytest

from dsctl.data.audit import audit_corpus
from dsctl.pipeline.testing import run_stage
from stages import audit


def _corpus(root, kept, rejected, planted):
    (root / "data").mkdir(parents=True)
    (root / "rejected").mkdir()
    (root / "data" / "part-00000.jsonl").write_text("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in kept))
    (root / "rejected" / "part-00000.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": "t", "reason": r, **({"duplicate_of": of} if of else {})}) + "\n"
                for i, r, of in rejected))
    (root / "planted.jsonl").write_text("".join(json.dumps(p) + "\n" for p in planted))
    return root


def test_filter_stage_precision_and_recall_against_planted_junk(tmp_path):
    planted = [{"id": "j1", "kind": "junk"}, {"id": "j2", "kind": "non_english"}, {"id": "j3", "kind": "short"}]
    root = _corpus(tmp_path / "clean", kept=["a", "b", "j3"],
                   rejected=[("j1", "symbol_word_ratio", None), ("j2", "language", None), ("c", "min_words", None)],
                   planted=planted)
    result = audit_corpus(root, {"config": {}})
    assert result["junk_recall"] == pytest.approx(2 / 3) and result["junk_precision"] == pytest.approx(2 / 3)
    assert result["removed_planted_by_kind"] == {"junk": 1, "non_english": 1}


def test_dedup_stage_near_and_exact_duplicate_quality(tmp_path):
    planted = [{"id": "n1", "kind": "near_dup", "of": "a", "jaccard": 0.9},
               {"id": "n2", "kind": "near_dup", "of": "b", "jaccard": 0.85},
               {"id": "e1", "kind": "exact_dup", "of": "c"}]
    root = _corpus(tmp_path / "dedup", kept=["a", "b", "c", "n2", "d"],
                   rejected=[("n1", "near_duplicate", "a"), ("e1", "exact_duplicate", "c"),
                             ("x", "near_duplicate", "d")],
                   planted=planted)
    result = audit_corpus(root, {"config": {"threshold": 0.8}})
    assert result["near_dup_recall"] == pytest.approx(0.5)        # n2 was missed
    assert result["near_dup_precision"] == pytest.approx(0.5)     # x merged into an unrelated doc
    assert result["exact_dup_recall"] == 1.0


def test_audit_stage_writes_a_report(tmp_path):
    root = _corpus(tmp_path / "clean", kept=["a"], rejected=[("j1", "min_words", None)],
                   planted=[{"id": "j1", "kind": "short"}])
    artifact = run_stage(audit.STAGE, {}, {"corpus": [root]}, workdir=tmp_path / "work")
    report = json.loads((artifact.path / "report.json").read_text())
    assert report["clean"]["junk_recall"] == 1.0 and artifact.manifest["headline"] == "clean_junk_precision"
