"""Vectorized MinHash over word 5-gram shingles, and the LSH banding that finds candidates.

Everything here works on a *batch* of documents at once with numpy, so Python never
loops over words, shingles or permutations of a single document:

1. Words: exact dedup compares `normalize_text` (casefold + collapse whitespace), so
   "Hello   World" and "hello world" are the same text; shingles are made of casefolded
   `\\w+` words, so punctuation edits do not break 5-grams (the default world measures
   its planted Jaccard the same way).
2. Word hashes: the batch is joined into one UTF-8 byte array; each word's polynomial
   hash is a difference of one prefix sum (`cumsum` of byte * P^-j, mod 2^64), then a
   splitmix64 finalizer. No per-word Python call.
3. Shingle hashes: a 5-gram's hash mixes its five word hashes (position-weighted), all
   shingles of the batch in one broadcast. A document of fewer than 5 words is one
   shingle of all its words (so short documents still have a signature).
4. MinHash: permutation i is h_i(x) = (a_i * x + b_i) mod 2^32 (a_i odd) of the
   shingle's 32-bit key x, for a block of permutations at once as one broadcast
   (block, n_shingles) op; the per-document minimum is one `np.minimum.reduceat` over
   the concatenated shingles (see `_perm_params` for why this family suffices).
5. LSH: the 128 values are cut into `bands` bands of `rows` rows; each band is hashed to
   one uint64 key. Two documents sharing a key in any band are a candidate pair.
   `optimal_bands` picks (bands, rows) for a Jaccard threshold by minimizing the weighted
   false-positive and false-negative areas under the banding S-curve (as datasketch does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SHINGLE_WORDS = 5
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


# Bytes that str.split() treats as whitespace (ASCII range): the separators of the
# normalized text that exact dedup compares.
WHITESPACE_BYTES = np.zeros(256, dtype=bool)
WHITESPACE_BYTES[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
# Bytes that are not part of a `\w+` word (every ASCII byte but [0-9A-Za-z_]): shingle
# words ignore punctuation, as the default world's planted Jaccard does.
NON_WORD_BYTES = np.ones(256, dtype=bool)
NON_WORD_BYTES[128:] = False
for _lo, _hi in ((48, 57), (65, 90), (97, 122), (95, 95)):
    NON_WORD_BYTES[_lo : _hi + 1] = False
_WORD_RE = re.compile(r"\w+")


def shingle_words(text: str) -> list[str]:
    """The words shingles are made of: casefolded `\\w+` runs (punctuation ignored)."""
    return _WORD_RE.findall(text.casefold())


@dataclass
class ByteBatch:
    """A batch joined by newlines as one byte array, with each text's first byte and the
    prefix sums that give any segment's polynomial hash in O(1)."""

    data: np.ndarray
    doc_starts: np.ndarray

    @classmethod
    def join(cls, texts: list[str]) -> "ByteBatch":
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        joined = "\n".join(texts).encode("utf-8")
        if len(joined) != lengths.sum() + max(len(texts) - 1, 0):  # some text was not ASCII
            lengths = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
        return cls(np.frombuffer(joined, dtype=np.uint8), np.cumsum(lengths + 1) - (lengths + 1))

    def words(self, separators: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of the maximal runs of non-separator bytes, and runs per text."""
        if self.data.size == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(self.doc_starts.size, dtype=np.int64)
        inside = np.zeros(self.data.size + 2, dtype=np.int8)
        np.logical_not(separators[self.data], out=inside[1:-1].view(bool))
        edges = np.diff(inside)  # +1 where a word starts, -1 one past where it ends
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        counts = np.diff(np.concatenate((np.searchsorted(starts, self.doc_starts), [starts.size])))
        return segment_hashes(self.data, starts, ends, prefix=self._prefix), counts

    @property
    def _prefix(self) -> np.ndarray:
        if not hasattr(self, "_prefix_cache"):
            self._prefix_cache = _prefix_sums(self.data)
        return self._prefix_cache


def _prefix_sums(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        weighted = values.astype(np.uint64) * _power_table(_P_INV, values.size)
        return np.concatenate(([np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)))


def segment_hashes(
    values: np.ndarray, starts: np.ndarray, ends: np.ndarray, salt: int = 0, prefix: np.ndarray | None = None
) -> np.ndarray:
    """Mixed polynomial hash of each segment values[s:e], independent of where it sits.

    prefix[j] = sum_{i<j} v_i * P^-i (mod 2^64), so (prefix[e] - prefix[s]) * P^s is
    sum_k v_{s+k} * P^-k: one cumsum for all segments, no per-segment loop.
    """
    prefix = _prefix_sums(values) if prefix is None else prefix
    with np.errstate(over="ignore"):
        raw = (prefix[ends] - prefix[starts]) * _power_table(_P, values.size + 1)[starts]
        raw += (ends - starts).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    return _mix64(raw)


def hash_batch(texts: list[str], digests: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(shingle-word hashes, words per text, exact digests or None) of a batch.

    All-ASCII text (the common case) is casefolded and turned into bytes once; both
    tokenizations (whitespace words for the exact digest, `\\w+` words for shingles) are
    read off the same byte array. Non-ASCII text is pre-tokenized in Python so Unicode
    whitespace and word characters are handled as `str.split` and `re` define them.
    """
    folded = [t.casefold() for t in texts]
    ascii_only = all(t.isascii() for t in folded)
    exact_bytes = ByteBatch.join(folded if ascii_only else [" ".join(t.split()) for t in folded])
    word_bytes = exact_bytes if ascii_only else ByteBatch.join([" ".join(_WORD_RE.findall(t)) for t in folded])
    words, counts = word_bytes.words(NON_WORD_BYTES)
    digest = text_digests(*exact_bytes.words(WHITESPACE_BYTES)) if digests else None
    return words, counts, digest


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the shingle words (`shingle_words`) of a batch, concatenated.
    Returns (hashes, words_per_doc)."""
    words, counts, _ = hash_batch(texts, digests=False)
    return words, counts


def text_digests(words: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(n_docs, 2) uint64: a 128-bit digest of each document's word sequence, i.e. of its
    normalized text (two independent 64-bit hashes; equal texts give equal digests)."""
    ends = np.cumsum(counts)
    starts = ends - counts
    return np.stack(
        [segment_hashes(words, starts, ends, salt=1),
         segment_hashes(words ^ np.uint64(0x5851F42D4C957F2D), starts, ends, salt=2)],
        axis=1,
    )


def shingle_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word-5-gram shingle of a batch, concatenated per document.

    Returns (hashes, shingles_per_doc). A document with 1..4 words is one shingle of all
    its words; an empty document has none.
    """
    return shingles_from_words(*word_hashes(texts))


def within_segments(counts: np.ndarray) -> np.ndarray:
    """Each element's index inside its segment, for segments of `counts` elements laid end
    to end: [0, 1, 2, 0, 1] for counts [3, 2]."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def shingles_from_words(words: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    per_doc = np.where(counts > 0, np.maximum(counts - (SHINGLE_WORDS - 1), 1), 0)
    total = int(per_doc.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint64), per_doc
    word_start = np.cumsum(counts) - counts
    first_word = np.repeat(word_start, per_doc) + within_segments(per_doc)
    width = np.repeat(np.minimum(counts, SHINGLE_WORDS), per_doc)
    acc = np.zeros(total, dtype=np.uint64)
    last = words.size - 1
    with np.errstate(over="ignore"):
        for t in range(SHINGLE_WORDS):
            term = words[np.minimum(first_word + t, last)] * _POSITION_WEIGHTS[t]
            acc += np.where(t < width, term, np.uint64(0))
    return _mix64(acc), per_doc


def unique_per_doc(hashes: np.ndarray, per_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's hashes as a sorted set: (concatenated sets, set size per document).

    The documents of a batch go into one (documents × longest) matrix padded with the
    largest uint64 and sorted along rows in one call, 7× faster than a np.unique per
    document; a batch whose longest document would make that matrix more than 4× its
    hashes (one giant document) takes the per-document loop instead.
    """
    n, total = per_doc.size, int(per_doc.sum())
    longest = int(per_doc.max()) if n else 0
    if n * longest > 4 * total + 4096:
        bounds = np.concatenate(([0], np.cumsum(per_doc)))
        sets = [np.unique(hashes[bounds[i]:bounds[i + 1]]) for i in range(n)]
        sizes = np.fromiter((s.size for s in sets), dtype=np.int64, count=n)
        return (np.concatenate(sets) if sets else hashes[:0]), sizes
    matrix = np.full((n, longest), np.iinfo(np.uint64).max, dtype=np.uint64)
    matrix[np.repeat(np.arange(n), per_doc), within_segments(per_doc)] = hashes
    matrix.sort(axis=1)
    # A row's first per_doc columns hold its hashes (padding sorts after them, or equals
    # the one hash it could be confused with); keep each value's first copy.
    keep = np.arange(longest)[None, :] < per_doc[:, None]
    keep[:, 1:] &= matrix[:, 1:] != matrix[:, :-1]
    return matrix[keep], keep.sum(1)


@dataclass(frozen=True)
class MinHasher:
    """A fixed family of `num_perm` universal hash functions (drawn from `seed`)."""

    num_perm: int = 128
    seed: int = 1

    @property
    def params(self) -> tuple[np.ndarray, np.ndarray]:
        return _perm_params(self.num_perm, self.seed)

    def signatures(self, texts: list[str], perm_block: int = 8) -> np.ndarray:
        """MinHash signatures (n_docs, num_perm) uint32 of texts.

        An empty document gets all 0xFFFFFFFF (it shares no shingle with anything).
        """
        shingles, per_doc = shingle_hashes(texts)
        return self.signatures_from_shingles(shingles, per_doc, perm_block)

    def signatures_from_shingles(self, shingles: np.ndarray, per_doc: np.ndarray, perm_block: int = 8) -> np.ndarray:
        n_docs = per_doc.size
        sig = np.full((n_docs, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        nonempty = np.flatnonzero(per_doc > 0)
        if nonempty.size == 0:
            return sig
        offsets = (np.cumsum(per_doc) - per_doc)[nonempty]
        keys = (shingles >> np.uint64(32)).astype(np.uint32)
        a, b = self.params
        values = np.empty((perm_block, keys.size), dtype=np.uint32)  # reused: no page faults per block
        mins = np.empty((self.num_perm, nonempty.size), dtype=np.uint32)
        for lo in range(0, self.num_perm, perm_block):
            hi = min(lo + perm_block, self.num_perm)
            block = values[: hi - lo]
            np.multiply(keys[None, :], a[lo:hi, None], out=block)  # (block, n_shingles), wraps mod 2^32
            np.add(block, b[lo:hi, None], out=block)
            mins[lo:hi] = np.minimum.reduceat(block, offsets, axis=1)
        sig[nonempty] = mins.T
        return sig


@lru_cache(maxsize=4)
def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """h_i(x) = (a_i * x + b_i) mod 2^32 with a_i odd: a bijection of the 32-bit keys.

    The keys are already uniformly mixed (splitmix64 of the shingle), so what MinHash
    needs from the family is that different h_i order a set independently; for mixed
    keys this linear family gives estimates whose error matches the binomial bound
    sqrt(J(1-J)/num_perm) (measured; see tests/test_dedup.py), at half the cost of
    64-bit arithmetic (numpy vectorizes 32-bit multiplies, not 64-bit ones).
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per (document, band): a hash of that band's `rows` values.

    sum_c v_c * w_c (mod 2^64) with random odd weights, then one splitmix64 per band:
    distinct bands of values collide with negligible probability.
    """
    n = signatures.shape[0]
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands*rows={bands * rows} exceeds the signature length {signatures.shape[1]}")
    weights = _band_weights(signatures.shape[1])
    keys = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            cols = slice(band * rows, (band + 1) * rows)
            keys[:, band] = signatures[:, cols].astype(np.uint64) @ weights[cols]
    return _mix64(keys)


@lru_cache(maxsize=4)
def _band_weights(num_perm: int) -> np.ndarray:
    draws = np.random.default_rng(12345).integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    return draws * np.uint64(2) + np.uint64(1)


def bucket_pairs(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Candidate pairs (lo, hi) of positions within each bucket of equal key rows
    (keys (n, k): one band's key, or a digest's parts), unique and sorted.

    Within a bucket members are sorted by position; each is paired with the bucket's first
    member and with its predecessor. That keeps pairs linear in bucket size (a bucket of
    1,000 copies gives ~2,000 pairs, not 500,000) while every member stays connected to the
    bucket through pairs the Jaccard check will see.
    """
    n = positions.size
    if n < 2:
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((positions, *keys.T[::-1]))  # by key (first column first), then position
    keys, positions = keys[order], positions[order].astype(np.int64)
    new_bucket = np.ones(n, dtype=bool)
    new_bucket[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    members = np.flatnonzero(~new_bucket)
    first = np.maximum.accumulate(np.where(new_bucket, np.arange(n), 0))
    pairs = np.concatenate((np.stack((positions[first[members]], positions[members]), 1),
                            np.stack((positions[members - 1], positions[members]), 1)))
    return unique_pairs(pairs)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of (n, 2) non-negative int64 pairs, sorted: one 1-D unique of
    lo·2^32 + hi (several times faster than np.unique(axis=0)); positions must be < 2^32."""
    if pairs.size == 0:
        return pairs.reshape(0, 2).astype(np.int64)
    keys = np.unique((pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64))
    return np.stack(((keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)), 1)


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Candidate pairs of row indices over all bands of (n, bands) keys (see `bucket_pairs`)."""
    rows = np.arange(keys.shape[0])
    found = [bucket_pairs(keys[:, band:band + 1], rows) for band in range(keys.shape[1])]
    return unique_pairs(np.concatenate(found)) if found else np.zeros((0, 2), np.int64)


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
    words = shingle_words(text)
    if not words:
        return set()
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


PAIR_CELLS = 1 << 21
"""Matrix cells (8 bytes each) `pair_jaccard` sorts at once: 16 MB."""


def pair_jaccard(values: np.ndarray, bounds: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard of many pairs of sets at once: float64 (n_pairs,), equal to `jaccard` of each.

    values: sets (sorted, unique) concatenated; bounds: (n_sets + 1,) offsets into values;
    a, b: the pairs' set indices. A pair's two sets go into one row of a matrix padded with
    the largest uint64, and the rows are sorted in one call: in a row, a value equal to its
    left neighbour is a shared one (each set is unique), so the intersection is a count of
    equal neighbours. Pairs are grouped by row length within a factor of two, so padding
    at most doubles the cells, and a group is cut into matrices of `PAIR_CELLS` cells.
    """
    sizes = np.diff(bounds)
    lengths = sizes[a] + sizes[b]
    inter = np.zeros(a.size, dtype=np.int64)
    classes = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    for cls in np.unique(classes).tolist():
        group = np.flatnonzero(classes == cls)
        width = int(lengths[group].max())
        step = max(1, PAIR_CELLS // max(width, 1))
        for lo in range(0, group.size, step):
            rows = group[lo:lo + step]
            inter[rows] = _shared_counts(values, bounds, sizes, a[rows], b[rows], width)
    union = lengths - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _shared_counts(values: np.ndarray, bounds: np.ndarray, sizes: np.ndarray, a: np.ndarray, b: np.ndarray,
                   width: int) -> np.ndarray:
    """|A ∩ B| of each pair, through one row-sorted (pairs × width) matrix."""
    n = a.size
    matrix = np.full((n, width), np.iinfo(np.uint64).max, dtype=np.uint64)
    for sets, shift in ((a, np.zeros(n, np.int64)), (b, sizes[a])):
        count = sizes[sets]
        if not count.any():
            continue
        row = np.repeat(np.arange(n), count)
        within = within_segments(count)
        matrix[row, within + shift[row]] = values[np.repeat(bounds[sets], count) + within]
    matrix.sort(axis=1)
    # only the first |A| + |B| columns hold values (a value equal to the padding still
    # sorts among them)
    filled = np.arange(1, width)[None, :] < (sizes[a] + sizes[b])[:, None]
    return ((matrix[:, 1:] == matrix[:, :-1]) & filled).sum(1)


def jaccard(a: set | np.ndarray, b: set | np.ndarray) -> float:
    """Jaccard of two shingle sets (Python sets, or sorted unique numpy hash arrays)."""
    if isinstance(a, np.ndarray):
        inter = np.intersect1d(a, b, assume_unique=True).size
        union = a.size + b.size - inter
    else:
        inter = len(a & b)
        union = len(a | b)
    return inter / union if union else 1.0
