"""Vectorized MinHash over word 5-gram shingles, and the LSH banding that finds candidates.

Everything here works on a *batch* of documents at once with numpy, so Python never
loops over words, shingles or permutations of a single document:

1. `normalize_text`: casefold + collapse whitespace (the same normalization exact dedup
   hashes), so "Hello   World" and "hello world" are the same text.
2. Word hashes: the batch is joined into one UTF-8 byte array; each word's polynomial
   hash is a difference of one prefix sum (`cumsum` of byte * P^-j, mod 2^64), then a
   splitmix64 finalizer. No per-word Python call.
3. Shingle hashes: a 5-gram's hash mixes its five word hashes (position-weighted), all
   shingles of the batch in one broadcast. A document of fewer than 5 words is one
   shingle of all its words (so short documents still have a signature).
4. MinHash: permutation i is the multiply-add-shift universal hash
   h_i(x) = ((a_i * x + b_i) mod 2^64) >> 32 of the shingle's 32-bit key x. Because the
   shift is monotone, the per-document minimum is taken on the raw 64-bit values with one
   `np.minimum.reduceat` over the concatenated shingles, and shifted afterwards.
5. LSH: the 128 values are cut into `bands` bands of `rows` rows; each band is hashed to
   one uint64 key. Two documents sharing a key in any band are a candidate pair.
   `optimal_bands` picks (bands, rows) for a Jaccard threshold by minimizing the weighted
   false-positive and false-negative areas under the banding S-curve (as datasketch does).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SHINGLE_WORDS = 5
_MASK32 = np.uint64(0xFFFFFFFF)
_P = 0x100000001B3  # FNV-64 prime; odd, so it has an inverse mod 2^64.
_P_INV = pow(_P, -1, 1 << 64)
# Weights that make a shingle's hash depend on word order (splitmix64 constants).
_POSITION_WEIGHTS = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F],
    dtype=np.uint64,
)


def normalize_text(text: str) -> str:
    """Casefold and collapse every whitespace run to one space (no leading/trailing)."""
    return " ".join(text.casefold().split())


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, in place on a uint64 array: every output bit depends on every
    input bit, which the linear polynomial/weighted sums below do not give by themselves."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@lru_cache(maxsize=8)
def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64 (uint64 products wrap, which is the modulus we want)."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


def _power_table(base: int, n: int) -> np.ndarray:
    # Round the size up to a power of two so the cache is reused across batches.
    size = 1 << max(12, (n - 1).bit_length())
    return _powers(base, size)[:n]


def word_hashes(normalized: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word of a batch of normalized texts, concatenated.

    Returns (hashes, words_per_doc). Empty texts contribute no words.
    """
    counts = np.array([t.count(" ") + 1 if t else 0 for t in normalized], dtype=np.int64)
    data = np.frombuffer(" ".join(t for t in normalized if t).encode("utf-8"), dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint64), counts
    spaces = np.flatnonzero(data == 32)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [data.size]))
    with np.errstate(over="ignore"):
        # prefix[j] = sum_{i<j} byte_i * P^-i, so a word's sum over [s, e) times P^s is
        # sum_k byte_{s+k} * P^-k: the same value wherever the word sits in the batch.
        weighted = data.astype(np.uint64) * _power_table(_P_INV, data.size)
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)))
        raw = (prefix[ends] - prefix[starts]) * _power_table(_P, data.size)[starts]
        raw += (ends - starts).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return _mix64(raw), counts


def shingle_hashes(normalized: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word-5-gram shingle of a batch, concatenated per document.

    Returns (hashes, shingles_per_doc). A document with 1..4 words is one shingle of all
    its words; an empty document has none.
    """
    words, counts = word_hashes(normalized)
    per_doc = np.where(counts > 0, np.maximum(counts - (SHINGLE_WORDS - 1), 1), 0)
    total = int(per_doc.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint64), per_doc
    word_start = np.cumsum(counts) - counts
    shingle_start = np.cumsum(per_doc) - per_doc
    first_word = np.repeat(word_start, per_doc) + (np.arange(total) - np.repeat(shingle_start, per_doc))
    width = np.repeat(np.minimum(counts, SHINGLE_WORDS), per_doc)
    acc = np.zeros(total, dtype=np.uint64)
    last = words.size - 1
    with np.errstate(over="ignore"):
        for t in range(SHINGLE_WORDS):
            term = words[np.minimum(first_word + t, last)] * _POSITION_WEIGHTS[t]
            acc += np.where(t < width, term, np.uint64(0))
    return _mix64(acc), per_doc


@dataclass(frozen=True)
class MinHasher:
    """A fixed family of `num_perm` universal hash functions (drawn from `seed`)."""

    num_perm: int = 128
    seed: int = 1

    @property
    def params(self) -> tuple[np.ndarray, np.ndarray]:
        return _perm_params(self.num_perm, self.seed)

    def signatures(self, normalized: list[str], perm_block: int = 16) -> np.ndarray:
        """MinHash signatures (n_docs, num_perm) uint32 of normalized texts.

        An empty document gets all 0xFFFFFFFF (it shares no shingle with anything).
        """
        shingles, per_doc = shingle_hashes(normalized)
        return self.signatures_from_shingles(shingles, per_doc, perm_block)

    def signatures_from_shingles(self, shingles: np.ndarray, per_doc: np.ndarray, perm_block: int = 16) -> np.ndarray:
        n_docs = per_doc.size
        sig = np.full((n_docs, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        nonempty = np.flatnonzero(per_doc > 0)
        if nonempty.size == 0:
            return sig
        offsets = (np.cumsum(per_doc) - per_doc)[nonempty]
        keys = shingles >> np.uint64(32)  # the 32-bit key the multiply-shift family needs
        a, b = self.params
        with np.errstate(over="ignore"):
            for lo in range(0, self.num_perm, perm_block):
                hi = min(lo + perm_block, self.num_perm)
                values = keys[None, :] * a[lo:hi, None] + b[lo:hi, None]  # (block, n_shingles)
                mins = np.minimum.reduceat(values, offsets, axis=1) >> np.uint64(32)
                sig[nonempty, lo:hi] = mins.T.astype(np.uint32)
        return sig


@lru_cache(maxsize=4)
def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)
    return a, b


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per (document, band): the hash of that band's `rows` values."""
    n = signatures.shape[0]
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands*rows={bands * rows} exceeds the signature length {signatures.shape[1]}")
    keys = np.empty((n, bands), dtype=np.uint64)
    sig = signatures.astype(np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            acc = np.full(n, np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for col in range(band * rows, (band + 1) * rows):
                acc = _mix64(acc ^ sig[:, col])
            keys[:, band] = acc
    return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Candidate pairs (lo, hi) of row indices, lo < hi, unique, sorted.

    Within a bucket (same key in one band) members are sorted by index; each is paired
    with the bucket's first member and with its predecessor. That keeps pairs linear in
    bucket size (a bucket of 1,000 copies gives ~2,000 pairs, not 500,000) while every
    member stays connected to the bucket through pairs the Jaccard check will see.
    """
    found = []
    n = keys.shape[0]
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
        members = np.flatnonzero(~new_group)
        if members.size == 0:
            continue
        group_first = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
        found.append(np.stack([order[group_first[members]], order[members]], axis=1))
        found.append(np.stack([order[members - 1], order[members]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    pairs = np.unique(pairs, axis=0)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def collision_probability(jaccard: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two documents of Jaccard s share at least one band) = 1 - (1 - s^rows)^bands."""
    s = np.asarray(jaccard, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


def optimal_bands(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimizing fp_weight * FP area + fn_weight * FN area of the S-curve.

    FP area = integral over s in [0, threshold] of the collision probability; FN area =
    integral over [threshold, 1] of its complement.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    below = np.linspace(0.0, threshold, 257)
    above = np.linspace(threshold, 1.0, 257)
    best, best_error = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(collision_probability(below, bands, rows), below)
            fn = np.trapezoid(1.0 - collision_probability(above, bands, rows), above)
            error = false_positive_weight * fp + false_negative_weight * fn
            if error < best_error - 1e-12:
                best, best_error = (bands, rows), error
    return best


def shingle_set(text: str) -> set[str]:
    """Reference (pure Python) word-5-gram shingle set of a text, for tests and ground truth."""
    words = normalize_text(text).split(" ") if text.strip() else []
    if not words:
        return set()
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def jaccard(a: set | np.ndarray, b: set | np.ndarray) -> float:
    """Jaccard of two shingle sets (Python sets, or sorted unique numpy hash arrays)."""
    if isinstance(a, np.ndarray):
        inter = np.intersect1d(a, b, assume_unique=True).size
        union = a.size + b.size - inter
    else:
        inter = len(a & b)
        union = len(a | b)
    return inter / union if union else 1.0
