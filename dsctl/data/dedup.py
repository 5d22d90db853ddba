"""Exact and near-duplicate removal over a streamed corpus.

Three passes over the input files, with only fixed-size per-document numbers in RAM
(a 16-byte digest and `bands` uint64 band keys per document; never the text):

1. scan: per batch, in worker processes: a 128-bit digest of the normalized text (exact
   dedup) and MinHash band keys (`dsctl.data.minhash`). The first occurrence of each digest is the
   *representative* of its exact-duplicate group; only representatives enter LSH.
2. verify (optional, default on): LSH candidate pairs are checked by their true Jaccard
   of word-5-gram shingle sets, read back only for documents that are in some pair.
   Pairs at or above the threshold are edges. With verification off, every LSH
   candidate pair is an edge (faster, less precise).
3. decide + write: connected components of the edges (vectorized union-find); the survivor of a
   cluster is its member that comes first in input order, so the result does not depend
   on the worker count or batch size. Every other member is rejected with reason
   "near_duplicate" (exact copies: "exact_duplicate") and `duplicate_of` = the final
   survivor's id. A cluster can chain (A~B, B~C, A!~C): C is still a near duplicate of
   the cluster and names A, the one copy that is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from dsctl.data.corpus import ReadStats, ShardWriter, iter_rows
from dsctl.data.minhash import (
    MinHasher,
    band_keys,
    candidate_pairs,
    jaccard,
    optimal_bands,
    shingle_hashes,
    hash_batch,
    shingles_from_words,
)
from dsctl.data.shards import batched, ordered_map

Progress = Callable[[int], None]


@dataclass
class DedupParams:
    """What decides which documents are duplicates (with the seed `find_duplicates` takes);
    the dedup stage's config is these plus how to run them."""

    threshold: float = 0.8
    """Jaccard of word-5-gram shingle sets at or above which two documents are near duplicates."""
    num_perm: int = 128
    """MinHash permutations per document."""
    bands: int = 0
    """LSH bands; 0 = chosen with `rows` from the threshold (see `resolve_bands`)."""
    rows: int = 0
    """Rows (signature values) per band; 0 = chosen with `bands`."""
    verify_jaccard: bool = True
    """Check every LSH candidate pair by its true shingle Jaccard before merging."""
    false_negative_weight: float = 0.99
    """Weight of missed pairs vs. extra candidates when choosing bands×rows. High by
    default because verification removes extra candidates but nothing recovers a miss:
    at threshold 0.8 it picks 18 bands × 7 rows, which finds a pair of Jaccard 0.8 with
    probability 0.986 and one of 0.85 with 0.999 (equal weights would pick 9×13: 0.40),
    while a pair of Jaccard 0.3 becomes a candidate with probability 0.004."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if (self.bands == 0) != (self.rows == 0):
            raise ValueError("set both bands and rows, or neither (0 = chosen from the threshold)")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if not 0.0 <= self.false_negative_weight <= 1.0:
            raise ValueError(f"false_negative_weight must be in [0, 1], got {self.false_negative_weight}")


@dataclass(frozen=True)
class RunOptions:
    """How the work is executed; does not change the result."""

    workers: int = 1
    batch_size: int = 512
    text_field: str = "text"


def resolve_bands(params: DedupParams) -> tuple[int, int]:
    if params.bands and params.rows:
        if params.bands * params.rows > params.num_perm:
            raise ValueError(f"bands*rows = {params.bands * params.rows} exceeds num_perm = {params.num_perm}")
        return params.bands, params.rows
    fn = params.false_negative_weight
    return optimal_bands(params.threshold, params.num_perm, 1.0 - fn, fn)


# -- worker functions (module level so process pools can pickle them) -------------------


def _scan_batch(job: tuple[list[str], int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact digests, band keys, has-shingles) of a batch of texts."""
    texts, num_perm, seed, bands, rows = job
    words, counts, digests = hash_batch(texts)
    signatures = MinHasher(num_perm, seed).signatures_from_shingles(*shingles_from_words(words, counts))
    return digests, band_keys(signatures, bands, rows), counts > 0


def _shingle_sets(texts: list[str]) -> list[np.ndarray]:
    hashes, per_doc = shingle_hashes(texts)
    bounds = np.concatenate(([0], np.cumsum(per_doc)))
    return [np.unique(hashes[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]


# -- the passes ----------------------------------------------------------------------------


@dataclass
class DedupResult:
    """Per input position: the survivor it maps to and whether it was an exact copy."""

    survivor: np.ndarray
    exact: np.ndarray
    bands: int
    rows: int
    candidate_pairs: int
    verified_pairs: int
    read_stats: ReadStats

    @property
    def documents(self) -> int:
        return int(self.survivor.size)

    @property
    def exact_duplicates(self) -> int:
        return int(self.exact.sum())

    @property
    def near_duplicates(self) -> int:
        return int((self.survivor != np.arange(self.survivor.size)).sum()) - self.exact_duplicates


def find_duplicates(
    files: list[Path], params: DedupParams, options: RunOptions = RunOptions(), progress: Progress | None = None,
    seed: int = 1,
) -> DedupResult:
    """Passes 1 and 2: decide, for every readable row, which row survives in its place;
    `seed` picks the MinHash permutation family."""
    bands, rows = resolve_bands(params)
    stats = ReadStats()
    texts = (row[options.text_field] for row in iter_rows(files, stats, options.text_field))
    jobs = ((batch, params.num_perm, seed, bands, rows) for batch in batched(texts, options.batch_size))
    digests, keys, has_words = [], [], []
    for batch_digests, batch_keys, batch_has_words in ordered_map(_scan_batch, jobs, options.workers):
        digests.append(batch_digests)
        keys.append(batch_keys)
        has_words.append(batch_has_words)
        if progress:
            progress(len(batch_digests))
    if not digests:
        empty = np.zeros(0, dtype=np.int64)
        return DedupResult(empty, empty.astype(bool), bands, rows, 0, 0, stats)
    digest = np.concatenate(digests)
    all_keys = np.concatenate(keys)
    del digests, keys
    representative = _first_occurrence(digest)
    # Texts without a single word have no shingles: nothing to be near (only exact) to.
    reps = np.flatnonzero((representative == np.arange(representative.size)) & np.concatenate(has_words))
    pairs = reps[candidate_pairs(all_keys[reps])]
    del all_keys
    edges = pairs
    if params.verify_jaccard and pairs.size:
        edges = _verified(files, pairs, params.threshold, options)
    survivor = _cluster_survivors(representative, edges)
    exact = representative != np.arange(representative.size)
    return DedupResult(survivor, exact, bands, rows, int(pairs.shape[0]), int(edges.shape[0]), stats)


def _first_occurrence(digest: np.ndarray) -> np.ndarray:
    """For each row, the position of the first row with the same digest."""
    _, first, inverse = np.unique(digest, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


def _verified(files: list[Path], pairs: np.ndarray, threshold: float, options: RunOptions) -> np.ndarray:
    """Keep the candidate pairs whose true shingle-set Jaccard is >= threshold."""
    needed = np.unique(pairs)
    wanted = np.zeros(int(needed[-1]) + 1, dtype=bool)
    wanted[needed] = True
    stats = ReadStats()

    def candidate_texts() -> Iterator[str]:
        for position, row in enumerate(iter_rows(files, stats, options.text_field)):
            if position >= wanted.size:
                return
            if wanted[position]:
                yield row[options.text_field]

    sets: list[np.ndarray] = []
    for batch_sets in ordered_map(_shingle_sets, batched(candidate_texts(), options.batch_size), options.workers):
        sets.extend(batch_sets)
    slot = np.searchsorted(needed, pairs)
    keep = np.fromiter((jaccard(sets[a], sets[b]) >= threshold for a, b in slot), dtype=bool, count=len(slot))
    return pairs[keep]


def _cluster_survivors(representative: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Survivor position of every row: the smallest position in its near-dup cluster
    (for an exact copy, the survivor of the row it copies)."""
    return _smallest_in_component(representative.size, edges)[representative]


def _smallest_in_component(n: int, edges: np.ndarray) -> np.ndarray:
    """Union-find over all edges at once: each node's label is the smallest node it is
    connected to. Every round hooks both ends of each edge to the smaller of their labels
    (`np.minimum.at`), then compresses paths by pointer jumping until labels are stable."""
    label = np.arange(n, dtype=np.int64)
    if edges.size == 0:
        return label
    a, b = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, label[a], low)  # hook the roots, as union-by-smaller-id does
        np.minimum.at(label, label[b], low)
        while True:  # path compression
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label, before):
            return label


def write_decisions(
    files: list[Path],
    result: DedupResult,
    kept: ShardWriter,
    rejected: ShardWriter,
    text_field: str = "text",
    progress: Progress | None = None,
) -> None:
    """Pass 3: stream the rows again and write each to `kept` or `rejected`."""
    positions = np.arange(result.documents)
    survivors_needed = set(np.unique(result.survivor[result.survivor != positions]).tolist())
    survivor_ids: dict[int, str] = {}
    for position, row in enumerate(iter_rows(files, ReadStats(), text_field)):
        doc_id = str(row.get("id", position))
        target = int(result.survivor[position])
        if target == position:
            kept.write(row)
            if position in survivors_needed:
                survivor_ids[position] = doc_id
        else:
            reason = "exact_duplicate" if result.exact[position] else "near_duplicate"
            # The survivor always comes earlier in input order, so its id is known here.
            rejected.write({**row, "reason": reason, "duplicate_of": survivor_ids[target]})
        if progress and position % 4096 == 4095:
            progress(4096)


def summary(result: DedupResult) -> dict[str, Any]:
    removed = result.exact_duplicates + result.near_duplicates
    return {
        "kept": result.documents - removed,
        "documents": result.documents,
        "removed_exact_duplicate": result.exact_duplicates,
        "removed_near_duplicate": result.near_duplicates,
        "removed_fraction": round(removed / result.documents, 6) if result.documents else 0.0,
        "lsh_bands": result.bands,
        "lsh_rows": result.rows,
        "candidate_pairs": result.candidate_pairs,
        "merged_pairs": result.verified_pairs,
        **result.read_stats.as_dict(),
    }
