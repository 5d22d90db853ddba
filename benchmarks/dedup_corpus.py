"""A synthetic planted near-duplicate corpus of any size, for the dedup benchmark and tests.

`synthetic_corpus(n)` returns corpus rows and the planted sidecar rows
(`{id, kind, of, jaccard}`) that `dsctl.data.audit.planted_quality` scores a dedup run
against. Used by benchmarks/bench_dedup.py and tests/test_dedup.py (as
`benchmarks.dedup_corpus`); nothing in `dsctl` uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsctl.data.minhash import jaccard


def synthetic_corpus(n_docs: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """A deterministic near-duplicate-rich corpus (rows, planted rows) for tests/benchmarks.

    ~62% originals of 60–300 words drawn from a 30k-word Zipf vocabulary (unrelated
    originals share almost no 5-gram), ~30% near duplicates made by scattered word
    substitutions/insertions/deletions aimed at a Jaccard uniform in [0.6, 0.98] (the
    true Jaccard is measured and recorded), ~8% exact copies with case/whitespace noise.
    Row order is shuffled, so a copy can precede its original.
    """
    rng = np.random.default_rng(seed)
    syllables = np.array([c + v for c in "bdfgklmnprstvz" for v in "aeiou"])
    parts = rng.integers(0, len(syllables), size=(30_000, 3))
    sizes = rng.integers(1, 4, size=30_000)
    # Unique words, so shingles of word ids and of the text agree (true Jaccard is exact).
    vocab = list(dict.fromkeys("".join(syllables[p[:k]]) + str(i % 7) for i, (p, k) in enumerate(zip(parts, sizes))))
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.8
    cdf = np.cumsum(weights) / weights.sum()
    n_orig = max(1, int(n_docs * 0.62))
    lengths = rng.integers(60, 300, size=n_orig)
    draws = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), len(vocab) - 1)
    originals = np.split(draws, np.cumsum(lengths)[:-1])
    rows = [{"id": f"doc{i:07d}", "text": " ".join(vocab[w] for w in words)} for i, words in enumerate(originals)]
    planted: list[dict[str, Any]] = []
    for i in range(n_docs - n_orig):
        src = int(rng.integers(n_orig))
        doc_id = f"dup{i:07d}"
        if rng.random() < 0.2:
            words = rows[src]["text"].split(" ")
            text = "  ".join(w.upper() if rng.random() < 0.1 else w for w in words)
            planted.append({"id": doc_id, "kind": "exact_dup", "of": rows[src]["id"]})
        else:
            text, true_j = _near_copy(originals[src], vocab, rng)
            planted.append({"id": doc_id, "kind": "near_dup", "of": rows[src]["id"], "jaccard": round(true_j, 4)})
        rows.append({"id": doc_id, "text": text})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order], planted


def _near_copy(words: np.ndarray, vocab: list[str], rng: np.random.Generator) -> tuple[str, float]:
    """A copy of `words` with scattered edits and its true 5-gram Jaccard to the original
    (each scattered edit changes up to 5 shingles, which sets the number of edits)."""
    target = rng.uniform(0.6, 0.98)
    shingles = max(len(words) - 4, 1)
    edits = max(1, round(shingles * (1 - target) / (5 * (1 + target))))
    out = words.tolist()
    for pos in sorted(rng.choice(len(out), size=min(edits, len(out) - 1), replace=False), reverse=True):
        op = rng.random()
        if op < 0.6:
            out[pos] = int(rng.integers(len(vocab)))
        elif op < 0.8:
            out.insert(pos, int(rng.integers(len(vocab))))
        else:
            del out[pos]
    return " ".join(vocab[w] for w in out), jaccard(_id_shingles(words.tolist()), _id_shingles(out))


def _id_shingles(ids: list[int]) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + 5]) for i in range(max(len(ids) - 4, 1))}
