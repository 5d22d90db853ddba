"""Dedup: MinHash/LSH internals, quality on planted near-duplicates, determinism, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from benchmarks.dedup_corpus import synthetic_corpus
from dsctl.data.audit import planted_quality, read_decisions
from dsctl.data.corpus import ShardWriter
from dsctl.data.dedup import DedupParams, deduplicate, smallest_in_component
from dsctl.data.executor import LocalExecutor
from dsctl.data.minhash import (
    MinHasher,
    candidate_pairs,
    hash_batch,
    jaccard,
    normalize_text,
    optimal_bands,
    shingle_hashes,
    shingle_set,
    word_hashes,
)

THRESHOLD = 0.8


def write_corpus(directory: Path, rows: list[dict], rows_per_shard: int = 700) -> list[Path]:
    with ShardWriter(directory, rows_per_shard) as writer:
        for row in rows:
            writer.write(row)
    return sorted(directory.glob("*.jsonl"))


def dedup_to(files: list[Path], out: Path, params=DedupParams(), workers: int = 1, batch_size: int = 512) -> dict:
    deduplicate(files, out / "work", out, params, LocalExecutor(workers), batch_size=batch_size)
    return read_decisions(sorted((out / "data").glob("*.jsonl")), sorted((out / "rejected").glob("*.jsonl")))


@pytest.fixture(scope="module")
def planted_corpus(tmp_path_factory) -> tuple[list[Path], list[dict], list[dict]]:
    rows, planted = synthetic_corpus(3000, seed=7)
    files = write_corpus(tmp_path_factory.mktemp("planted") / "in", rows)
    return files, rows, planted


def test_word_hash_depends_only_on_the_casefolded_word():
    hashes, counts = word_hashes(["alpha, beta  Alpha!", "\tBETA\n", "", "gamma\u3000alpha", "Straße"])
    assert counts.tolist() == [3, 1, 0, 2, 1]
    alpha, beta = hashes[0], hashes[1]
    assert hashes[2] == alpha and hashes[3] == beta and hashes[5] == alpha
    assert len({int(h) for h in hashes}) == 4
    assert hashes[6] == word_hashes(["strasse"])[0][0]  # casefold, as normalize_text


def test_exact_digest_equal_iff_normalized_text_equal():
    texts = ["The  cat sat", "the cat\nSAT ", "the cat sat.", "cat the sat", "", "   ", "Ünï  côde", "ünï\u3000CÔDE"]
    digests = hash_batch(texts)[2]  # the exact-duplicate digests dedup keys on
    same = [[bool((digests[i] == digests[j]).all()) for j in range(len(texts))] for i in range(len(texts))]
    expected = [[normalize_text(a) == normalize_text(b) for b in texts] for a in texts]
    assert same == expected


def test_shingle_hashes_match_reference_shingle_sets():
    texts = ["one two three four five six seven", "a b, c!", "x y z w v x y z w v", "", "né à l'été, déjà vu ici"]
    hashes, per_doc = shingle_hashes(texts)
    bounds = np.concatenate(([0], np.cumsum(per_doc)))
    for i, text in enumerate(texts):
        assert len(set(hashes[bounds[i] : bounds[i + 1]].tolist())) == len(shingle_set(text))


def test_minhash_agreement_estimates_true_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 5000, size=400)]
    errors = []
    for edits in (2, 6, 12, 25):
        copy = list(words)
        for pos in rng.choice(len(copy), size=edits, replace=False):
            copy[pos] = f"new{pos}"
        a, b = " ".join(words), " ".join(copy)
        sig = MinHasher(128, seed=3).signatures([a, b])
        errors.append((sig[0] == sig[1]).mean() - jaccard(shingle_set(a), shingle_set(b)))
    # 128 permutations: standard error <= 0.044; allow ~3 sigma.
    assert max(abs(e) for e in errors) < 0.13
    assert abs(np.mean(errors)) < 0.06


def test_optimal_bands_agree_with_datasketch():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        for weights in ((0.5, 0.5), (0.05, 0.95), (0.01, 0.99)):
            assert optimal_bands(threshold, 128, *weights) == _optimal_param(threshold, 128, *weights)


def test_candidate_pairs_are_linear_in_bucket_size():
    keys = np.zeros((1000, 2), dtype=np.uint64)  # one giant bucket in both bands
    pairs = candidate_pairs(keys)
    assert len(pairs) < 2000 and (pairs[:, 0] < pairs[:, 1]).all()
    assert set(np.unique(pairs).tolist()) == set(range(1000))


def test_near_dup_precision_and_recall_on_planted_corpus(planted_corpus, tmp_path):
    files, _, planted = planted_corpus
    decisions = dedup_to(files, tmp_path, DedupParams(threshold=THRESHOLD))
    quality = planted_quality({p["id"]: p for p in planted}, decisions, THRESHOLD)
    assert quality["expected_merges"] > 300
    assert quality["recall"] >= 0.95, quality
    assert quality["precision"] >= 0.95, quality
    assert quality["exact_dup_recall"] == 1.0, quality


def test_default_world_planted_near_dups_removed_with_high_precision(tmp_path):
    from dsctl.data.world import build_world

    world = build_world(seed=0)
    decisions = dedup_to(write_corpus(tmp_path / "in", world.rows, 2000), tmp_path / "out")
    texts = {row["id"]: row["text"] for row in world.rows}
    quality = planted_quality({p["id"]: p for p in world.planted}, decisions, THRESHOLD, texts)
    assert quality["expected_merges"] >= 50
    assert quality["recall"] >= 0.95, quality
    # The world's junk documents are real near duplicates of each other (unplanted), so
    # precision is judged by true Jaccard with the survivor as well as by planted family.
    assert quality["precision_true_jaccard"] >= 0.95, quality
    assert quality["exact_dup_recall"] == 1.0, quality


def test_exact_duplicates_ignore_case_and_whitespace(tmp_path):
    rows = [
        {"id": "a", "text": "The quick brown fox jumps"},
        {"id": "b", "text": "  the QUICK\tbrown\n\nfox   jumps "},
        {"id": "c", "text": "A different sentence entirely here"},
        {"id": "d", "text": "The quick brown fox jumps"},
    ]
    decisions = dedup_to(write_corpus(tmp_path / "in", rows), tmp_path / "out")
    assert decisions == {
        "a": None,
        "b": ("exact_duplicate", "a"),
        "c": None,
        "d": ("exact_duplicate", "a"),
    }


def test_survivor_is_first_in_input_order_and_named_by_duplicates(planted_corpus, tmp_path):
    files, rows, _ = planted_corpus
    decisions = dedup_to(files, tmp_path)
    position = {row["id"]: i for i, row in enumerate(rows)}
    removed = {d: dec for d, dec in decisions.items() if dec}
    assert removed
    for doc_id, (_, survivor) in removed.items():
        assert decisions[survivor] is None, "duplicate_of must name a kept row"
        assert position[survivor] < position[doc_id]


def test_output_is_identical_for_any_worker_count_and_batch_size(planted_corpus, tmp_path):
    files, _, _ = planted_corpus
    outputs = []
    for workers, batch in ((1, 512), (2, 97)):
        out = tmp_path / f"w{workers}"
        dedup_to(files, out, workers=workers, batch_size=batch)
        outputs.append([p.read_bytes() for p in sorted(out.glob("*/*.jsonl"))])
    assert outputs[0] == outputs[1]


def test_without_verification_lsh_candidates_are_merged(tmp_path):
    base = " ".join(f"word{i}" for i in range(60))
    rows = [{"id": "a", "text": base}, {"id": "b", "text": base.replace("word30", "other")}]
    files = write_corpus(tmp_path / "in", rows)
    # Jaccard ~0.85: below a 0.9 threshold, so the verified run keeps both...
    kept = dedup_to(files, tmp_path / "v", DedupParams(threshold=0.9))
    assert kept == {"a": None, "b": None}
    # ...while a loose LSH without the check merges them on band collisions alone.
    loose = DedupParams(threshold=0.9, bands=32, rows=2, verify_jaccard=False)
    assert dedup_to(files, tmp_path / "u", loose)["b"] == ("near_duplicate", "a")


def test_unreadable_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "in" / "part-00000.jsonl"
    path.parent.mkdir()
    path.write_text('{"id": "a", "text": "hello there"}\nnot json\n{"id": "b", "text": "Hello  there"}\n')
    summary = deduplicate([path], tmp_path / "work", tmp_path / "out", DedupParams(), LocalExecutor(1))
    assert summary.read.malformed_json == 1
    assert summary.documents == 2 and summary.exact_duplicates == 1


def test_dedup_stage_writes_corpus_rejected_and_planted(planted_corpus, tmp_path):
    from dsctl.pipeline.testing import run_stage
    from stages import dedup

    files, rows, planted = planted_corpus
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    for f in files:
        (src / "data" / f.name).write_bytes(f.read_bytes())
    (src / "planted.jsonl").write_text("".join(json.dumps(p) + "\n" for p in planted))
    art = run_stage(dedup.STAGE, {"workers": 2}, {"corpus": [src]}, tmp_path / "work")
    metrics = art.metrics
    assert metrics["documents"] == len(rows)
    assert metrics["kept"] + metrics["removed_exact_duplicate"] + metrics["removed_near_duplicate"] == len(rows)
    assert (art.path / "planted.jsonl").read_text() == (src / "planted.jsonl").read_text()
    rejected = [json.loads(line) for p in sorted((art.path / "rejected").glob("*.jsonl")) for line in open(p)]
    assert {r["reason"] for r in rejected} == {"exact_duplicate", "near_duplicate"}


def test_union_find_labels_each_component_with_its_smallest_member():
    rng = np.random.default_rng(0)
    n = 500
    edges = np.sort(rng.integers(0, n, size=(300, 2)), axis=1)
    labels = smallest_in_component(n, edges)
    # Reference: plain sequential union-find.
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    assert labels.tolist() == [find(i) for i in range(n)]
    chain = np.array([[i, i + 1] for i in range(999, 0, -1)])  # a long path, given backwards
    assert (smallest_in_component(1001, chain)[1:] == 1).all()


@pytest.mark.parametrize("lengths", [[5, 0, 300, 7], [3, 2000, 1]], ids=["padded matrix", "one giant document"])
def test_unique_per_doc_gives_each_documents_sorted_set(lengths):
    from dsctl.data.minhash import unique_per_doc

    rng = np.random.default_rng(0)
    per_doc = np.array(lengths)
    hashes = rng.integers(0, 50, size=int(per_doc.sum())).astype(np.uint64)  # many repeats
    hashes[-1] = np.iinfo(np.uint64).max  # the padding value itself, as a real hash
    sets, sizes = unique_per_doc(hashes, per_doc)
    bounds = np.concatenate(([0], np.cumsum(per_doc)))
    expected = [np.unique(hashes[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert sizes.tolist() == [e.size for e in expected]
    assert np.array_equal(sets, np.concatenate(expected))


def test_pair_jaccard_equals_jaccard_of_each_pair(monkeypatch):
    from dsctl.data import minhash

    monkeypatch.setattr(minhash, "PAIR_CELLS", 64)  # many small matrices, and a pair wider than one
    rng = np.random.default_rng(1)
    sets = [np.unique(rng.integers(0, 40, size=n)).astype(np.uint64) for n in [0, 0, 1, 3, 12, 30, 90, 200]]
    sets.append(np.array([5, np.iinfo(np.uint64).max], dtype=np.uint64))  # the padding value as a real hash
    sets.append(sets[5].copy())  # an identical set: Jaccard exactly 1
    bounds = np.concatenate(([0], np.cumsum([s.size for s in sets])))
    a, b = np.array([(i, j) for i in range(len(sets)) for j in range(len(sets))]).T
    got = minhash.pair_jaccard(np.concatenate(sets), bounds, a, b)
    assert got.tolist() == [jaccard(sets[i], sets[j]) for i, j in zip(a, b)]


def test_kept_lines_pass_through_unchanged_and_bad_lines_do_not_shift_rows(tmp_path):
    path = tmp_path / "in" / "part-00000.jsonl"
    path.parent.mkdir()
    text = " ".join(f"word{i}" for i in range(40))
    path.write_bytes(
        b'{"id": "a",   "text": "' + text.encode() + b'", "n": 1.50}\n'
        b"not json\n"
        b'{"id": "b", "text": "bad \xff bytes"}\n'
        b"\n"
        b'{"id": "c", "text": "' + text.upper().encode() + b'"}\r\n'
        b'{"id": "d", "text": "something else entirely, not a copy of anything"}'
    )
    out = tmp_path / "out"
    deduplicate([path], tmp_path / "work", out, DedupParams(), LocalExecutor(1))
    kept = (out / "data" / "part-00000.jsonl").read_bytes().splitlines()
    assert kept == [path.read_bytes().splitlines()[0], path.read_bytes().splitlines()[-1]]  # byte for byte
    rejected = [json.loads(line) for line in (out / "rejected" / "part-00000.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in rejected] == [("c", "exact_duplicate", "a")]
