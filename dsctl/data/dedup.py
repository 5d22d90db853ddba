"""Exact and near-duplicate removal as a sharded, resumable job (MinHash LSH + true Jaccard).

The corpus never sits in memory: every step is a set of tasks over files, run by an
`Executor` (processes here, or Ray tasks on a cluster), and memory grows with a shard or
a bucket, not with the corpus. The steps, and what each leaves in the work directory:

1. signatures, one task per input shard: stream its rows; for each document a 128-bit
   digest of the normalized text (exact dedup), its shingle set and `bands` MinHash band
   keys. Written per shard as one sorted file per band ([key, row]), one sorted digest
   file, the shingle sets (for step 3) and the ids.
2. buckets, one task per (band, key range), plus one per digest range: read that key
   range of every shard's sorted band file, and within each bucket of equal keys emit
   candidate edges (each member to the bucket's first and to its predecessor, linear in
   bucket size). Digest buckets give the exact-duplicate edges. Memory: one key range;
   ranges are sized from the document count (`BUCKET_ROWS` entries at most).
3. verify (optional, default on): the true Jaccard of each chunk of candidate pairs, from
   the stored shingle sets. Pairs at or above the threshold are edges. (Off: every
   candidate is an edge.)
4. clusters: union-find over all edge files; a document's survivor is the member of its
   cluster that comes first in input order, so the result depends on nothing but the
   input. Exact copies are rejected as "exact_duplicate", other members as
   "near_duplicate", each with `duplicate_of` = the survivor's id.
5. write, one task per shard: its kept rows to data/part-NNNNN.jsonl and the others to
   rejected/part-NNNNN.jsonl (NNNNN = the input shard's number).

Each step's task is a frozen dataclass (`SignatureJob`, `BucketJob`, `CheckJob`,
`ClusterJob`, `WriteJob`). Every task writes its files under temporary names and renames
them into place (the arrays through `dsctl.files`); its completion marker follows
(dsctl.data.jobs). A rerun after a crash or kill skips every
task with a marker, so it resumes where it stopped and gives the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsctl.data.corpus import PartFile, ReadStats, is_jsonl, iter_row_lines, iter_rows, part_name, remove_partial_parts
from dsctl.data.executor import Executor, LocalExecutor
from dsctl.data.jobs import Progress, run_tasks
from dsctl.data.minhash import (
    MinHasher,
    band_keys,
    bucket_pairs,
    hash_batch,
    optimal_bands,
    pair_jaccard,
    shingles_from_words,
    unique_pairs,
    unique_per_doc,
)
from dsctl.data.shards import batched
from dsctl.files import write_bytes_atomic, write_json_atomic

BUCKET_ROWS = 4_000_000
"""Band entries one bucket task reads at most (16 bytes each, sorted in memory)."""
PAIRS_PER_CHECK = 500_000
"""Candidate pairs one Jaccard-check task takes."""
PAIRS_PER_READ = 8_192
"""Candidate pairs whose shingle sets a check task holds at once."""



@dataclass
class DedupParams:
    """What decides which documents are duplicates (with the seed `deduplicate` takes);
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


def resolve_bands(params: DedupParams) -> tuple[int, int]:
    if params.bands and params.rows:
        return params.bands, params.rows
    fn = params.false_negative_weight
    return optimal_bands(params.threshold, params.num_perm, 1.0 - fn, fn)


@dataclass
class DedupSummary:
    documents: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    bands: int = 0
    rows: int = 0
    candidate_pairs: int = 0
    merged_pairs: int = 0
    read: ReadStats = field(default_factory=ReadStats)

    def metrics(self) -> dict[str, Any]:
        removed = self.exact_duplicates + self.near_duplicates
        return {
            "kept": self.documents - removed,
            "documents": self.documents,
            "removed_exact_duplicate": self.exact_duplicates,
            "removed_near_duplicate": self.near_duplicates,
            "removed_fraction": round(removed / self.documents, 6) if self.documents else 0.0,
            "lsh_bands": self.bands,
            "lsh_rows": self.rows,
            "candidate_pairs": self.candidate_pairs,
            "merged_pairs": self.merged_pairs,
            **self.read.as_dict(),
        }


# -- files and markers ------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> None:
    """An .npy file, through the one atomic writer. It is serialized in memory first, so
    writing costs one more copy of the array: a shard's band keys, a bucket's edges, or
    (clusters) 8 bytes per document, beside the edges that step already holds."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getbuffer())


# -- 1. signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureJob:
    """Step 1 for one input shard: its digests, band keys, shingle sets and ids."""

    index: int
    """The input shard's number (its files are `signatures/shard-NNNNN/`)."""
    path: Path
    """The shard's row file."""
    work: Path
    """The job's work directory."""
    text_field: str
    batch_size: int
    """Documents hashed at a time."""
    num_perm: int
    seed: int
    """Seeds the MinHash permutations: every shard must hash with the same ones."""
    bands: int
    rows: int
    """Signature values per band."""


def _signature_task(job: SignatureJob) -> None:
    out = job.work / "signatures" / f"shard-{job.index:05d}"
    out.mkdir(parents=True, exist_ok=True)
    stats = ReadStats()
    hasher = MinHasher(job.num_perm, job.seed)
    digests, keys, set_sizes, ids = [], [], [], []
    # Every document's shingle set, kept for the Jaccard check (cheaper than reading and
    # hashing the candidates' texts again): written batch by batch, renamed when complete.
    # Streamed, so not through dsctl.files, which takes a file's whole bytes: a shard's
    # shingle sets are the largest thing the job writes.
    sets_tmp = out / "shingles.bin.tmp"
    with open(sets_tmp, "wb") as sets_file:
        skipped: list[int] = []
        for batch in batched(iter_rows([job.path], stats, job.text_field, skipped), job.batch_size):
            words, counts, digest = hash_batch([row[job.text_field] for row in batch])
            sets, sizes = unique_per_doc(*shingles_from_words(words, counts))
            sets.astype(np.uint64).tofile(sets_file)
            digests.append(digest)
            keys.append(band_keys(hasher.signatures_from_shingles(sets, sizes), job.bands, job.rows))
            set_sizes.append(sizes)
            base = len(ids)  # a row without an id is named by its row number in the shard
            ids.extend(str(row.get("id", base + i)) for i, row in enumerate(batch))
    os.replace(sets_tmp, out / "shingles.bin")
    n = len(ids)
    sizes = np.concatenate(set_sizes) if set_sizes else np.zeros(0, np.int64)
    _save(out / "shingles.offsets.npy", np.concatenate(([0], np.cumsum(sizes))).astype(np.int64))
    digest = np.concatenate(digests) if digests else np.zeros((0, 2), np.uint64)
    key = np.concatenate(keys) if keys else np.zeros((0, job.bands), np.uint64)
    # Texts without a single word have no shingles: nothing to be near (only exact) to.
    worded = np.flatnonzero(sizes > 0)
    for band in range(job.bands):
        _save(out / f"band-{band:02d}.npy", _sorted_entries(key[worded, band], worded))
    order = np.lexsort((np.arange(n), digest[:, 1], digest[:, 0])) if n else np.zeros(0, np.int64)
    _save(out / "digest.npy", np.column_stack((digest[order], order.astype(np.uint64))))
    write_json_atomic(out / "ids.json", ids)
    write_json_atomic(out / "info.json", {"rows": n, "read": asdict(stats), "skipped_lines": skipped})


def _sorted_entries(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 [key, row], sorted by key, then row."""
    order = np.lexsort((rows, keys))
    return np.column_stack((keys[order], rows[order].astype(np.uint64)))


# -- 2. buckets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketJob:
    """Step 2 for one key range of one band: its candidate edges."""

    index: int
    """The task's number (its edges are `edges/bucket-NNNNN.npy`)."""
    work: Path
    band: int
    """The LSH band, or -1 for the exact digests."""
    key_range: int
    """Which of `ranges` equal slices of the uint64 keys."""
    ranges: int
    offsets: tuple[int, ...]
    """Each shard's first document's position in the corpus."""


def _bucket_task(job: BucketJob) -> None:
    """Edges of one key range of one band (or of the exact digests, band -1)."""
    band = job.band
    lo, hi = _key_range(job.key_range, job.ranges)
    parts = []
    for shard, offset in enumerate(job.offsets):
        name = "digest.npy" if band < 0 else f"band-{band:02d}.npy"
        entries = np.load(job.work / "signatures" / f"shard-{shard:05d}" / name, mmap_mode="r")
        first = entries[:, 0]
        start, stop = np.searchsorted(first, lo), (np.searchsorted(first, hi) if hi is not None else len(first))
        chunk = np.array(entries[start:stop])
        chunk[:, -1] += np.uint64(offset)  # row in shard -> position in the corpus
        parts.append(chunk)
    entries = np.concatenate(parts) if parts else np.zeros((0, 2 if band >= 0 else 3), np.uint64)
    _save(job.work / "edges" / f"bucket-{job.index:05d}.npy",
          bucket_pairs(entries[:, :-1], entries[:, -1].astype(np.int64)))


def _key_range(index: int, ranges: int) -> tuple[np.uint64, np.uint64 | None]:
    """[lo, hi) of the index-th of `ranges` equal slices of the uint64 keys (hi None: to the end)."""
    width = (1 << 64) // ranges
    lo = np.uint64(index * width)
    return lo, (np.uint64((index + 1) * width) if index + 1 < ranges else None)


# -- 3. verify -------------------------------------------------------------------------------


class ShingleReader:
    """Shingle sets (sorted, unique) of documents by corpus position, read from the
    signature step's shingle files with pread: nothing is memory-mapped, so a check task's
    memory is a block of pairs, their sets and the offsets of the shards its pairs reach
    (mapped pages would count as its own and grow with them)."""

    def __init__(self, work: Path, offsets: np.ndarray) -> None:
        self.work, self.offsets = work, offsets
        self._shards: dict[int, tuple[int, np.ndarray]] = {}

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sets of `positions`, concatenated in that order, and their (n + 1,) bounds."""
        shard_of = np.searchsorted(self.offsets, positions, side="right") - 1
        fds, starts, stops = (np.zeros(positions.size, dtype=np.int64) for _ in range(3))
        for shard in np.unique(shard_of).tolist():
            mine = shard_of == shard
            fds[mine], bounds = self._open(shard)
            rows = positions[mine] - int(self.offsets[shard])
            starts[mine], stops[mine] = bounds[rows], bounds[rows + 1]
        chunks = [os.pread(fd, 8 * (stop - start), 8 * start)
                  for fd, start, stop in zip(fds.tolist(), starts.tolist(), stops.tolist())]
        values = np.frombuffer(b"".join(chunks), dtype=np.uint64)
        return values, np.concatenate(([0], np.cumsum(stops - starts)))

    def _open(self, shard: int) -> tuple[int, np.ndarray]:
        if shard not in self._shards:
            base = self.work / "signatures" / f"shard-{shard:05d}"
            self._shards[shard] = (os.open(base / "shingles.bin", os.O_RDONLY), np.load(base / "shingles.offsets.npy"))
        return self._shards[shard]

    def close(self) -> None:
        for fd, _ in self._shards.values():
            os.close(fd)


@dataclass(frozen=True)
class CheckJob:
    """Step 3 for one chunk of candidate pairs (`verify/pairs-NNNNN.npy`)."""

    index: int
    """The chunk's number (its verdicts are `verify/keep-NNNNN.npy`)."""
    work: Path
    threshold: float
    offsets: tuple[int, ...]
    """Each shard's first document's position in the corpus."""


def _check_task(job: CheckJob) -> None:
    """Which pairs of one chunk have a true shingle Jaccard at or above the threshold:
    `PAIRS_PER_READ` pairs at a time, each document's set read once per block."""
    pairs = np.load(job.work / "verify" / f"pairs-{job.index:05d}.npy")
    shingles = ShingleReader(job.work, np.asarray(job.offsets))
    keep = np.zeros(len(pairs), dtype=bool)
    try:
        for lo in range(0, len(pairs), PAIRS_PER_READ):
            block = pairs[lo:lo + PAIRS_PER_READ]
            documents, index = np.unique(block, return_inverse=True)
            values, bounds = shingles.read(documents)
            index = index.reshape(block.shape)
            keep[lo:lo + len(block)] = pair_jaccard(values, bounds, index[:, 0], index[:, 1]) >= job.threshold
    finally:
        shingles.close()
    _save(job.work / "verify" / f"keep-{job.index:05d}.npy", keep)


# -- 4. clusters -----------------------------------------------------------------------------


def smallest_in_component(n: int, edges: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True, eq=False)  # eq=False: it holds arrays, which do not compare to one bool
class ClusterJob:
    """Step 4, the one task that sees every edge (the `index` is 0)."""

    index: int
    work: Path
    total: int
    """Documents in the corpus."""
    edges: np.ndarray
    """(m, 2) corpus positions: every edge, exact and verified near."""
    exact_edges: np.ndarray
    """The digest buckets' edges alone; each pair's second member is an exact copy."""


def _cluster_task(job: ClusterJob) -> None:
    exact = np.zeros(job.total, dtype=bool)
    exact[job.exact_edges[:, 1]] = True  # a digest bucket's members after its first
    _save(job.work / "clusters" / "survivor.npy", smallest_in_component(job.total, job.edges))
    _save(job.work / "clusters" / "exact.npy", exact)


# -- 5. write --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteJob:
    """Step 5 for one input shard: its kept and rejected parts."""

    index: int
    """The input shard's number (its parts are `part-NNNNN.jsonl`)."""
    path: Path
    """The shard's row file."""
    work: Path
    out: Path
    """The artifact: data/ and rejected/ go under it."""
    text_field: str
    offset: int
    """The shard's first document's position in the corpus."""
    survivor_ids: dict[int, str]
    """Id of every survivor in an earlier shard that a document of this one duplicates,
    by corpus position."""


def _write_task(job: WriteJob) -> None:
    work, path, shard, offset = job.work, job.path, job.index, job.offset
    signatures = work / "signatures" / f"shard-{shard:05d}"
    ids = json.loads((signatures / "ids.json").read_text())
    info = json.loads((signatures / "info.json").read_text())
    mine = slice(offset, offset + info["rows"])
    survivor = np.load(work / "clusters" / "survivor.npy", mmap_mode="r")[mine].tolist()
    exact = np.load(work / "clusters" / "exact.npy", mmap_mode="r")[mine].tolist()
    # A kept JSONL row goes out as the line it came in (it is unchanged), so only the
    # rejected ones are parsed and written again; other formats are rows to serialize.
    lines = iter_row_lines(path, info["skipped_lines"]) if is_jsonl(path) else None
    rows = lines if lines is not None else iter_rows([path], ReadStats(), job.text_field)
    with PartFile(job.out / "data" / part_name(shard)) as kept, \
            PartFile(job.out / "rejected" / part_name(shard)) as rejected:
        for position, (row, target) in enumerate(zip(rows, survivor), start=offset):
            if target == position:
                if lines is not None:
                    kept.write_line(row)
                else:
                    kept.write(row)
                continue
            reason = "exact_duplicate" if exact[position - offset] else "near_duplicate"
            # The survivor comes earlier in input order: in this shard, or in one before.
            of = ids[target - offset] if target >= offset else job.survivor_ids[target]
            row = json.loads(row) if lines is not None else row
            rejected.write({**row, "reason": reason, "duplicate_of": of})


# -- the job ---------------------------------------------------------------------------------


def deduplicate(files: list[Path], work: Path, out: Path, params: DedupParams, executor: Executor, *,
                seed: int = 1, batch_size: int = 512, text_field: str = "text",
                progress: Progress | None = None) -> DedupSummary:
    """Run (or resume) the whole job: `work` keeps the intermediate files and markers,
    `out` receives data/ and rejected/."""
    bands, rows = resolve_bands(params)
    work.mkdir(parents=True, exist_ok=True)
    signature_jobs = [SignatureJob(index=i, path=Path(p), work=work, text_field=text_field, batch_size=batch_size,
                                   num_perm=params.num_perm, seed=seed, bands=bands, rows=rows)
                      for i, p in enumerate(files)]
    run_tasks(executor, work, "signatures", _signature_task, signature_jobs, progress)
    infos = [json.loads((work / "signatures" / f"shard-{i:05d}" / "info.json").read_text()) for i in range(len(files))]
    counts = [info["rows"] for info in infos]
    offsets = tuple(np.concatenate(([0], np.cumsum(counts)))[:-1].astype(np.int64).tolist())
    total = int(sum(counts))
    if total >= 1 << 32:  # edges are packed as two 32-bit positions (minhash.unique_pairs)
        raise ValueError(f"dedup takes fewer than 2^32 documents per run, got {total:,}")
    summary = DedupSummary(documents=total, bands=bands, rows=rows)
    for info in infos:
        summary.read.merge(ReadStats(**info["read"]))

    ranges = max(1, math.ceil(total / BUCKET_ROWS))
    bucket_jobs = [BucketJob(index=n, work=work, band=band, key_range=r, ranges=ranges, offsets=offsets)
                   for n, (band, r) in enumerate((band, r) for band in range(-1, bands) for r in range(ranges))]
    run_tasks(executor, work, "buckets", _bucket_task, bucket_jobs, progress)  # band -1: the digests
    exact_files = [job.index for job in bucket_jobs if job.band < 0]
    exact_edges = _load_edges(work, exact_files)
    candidates = unique_pairs(_load_edges(work, [job.index for job in bucket_jobs if job.band >= 0]))
    summary.candidate_pairs = int(candidates.shape[0])

    edges = candidates
    if params.verify_jaccard and candidates.size:
        edges = _verified(executor, work, candidates, offsets, params.threshold, progress)
    summary.merged_pairs = int(edges.shape[0])

    # One task, in this process: union-find needs every edge at once.
    run_tasks(LocalExecutor(1), work, "clusters", _cluster_task,
              [ClusterJob(index=0, work=work, total=total, edges=np.concatenate((exact_edges, edges)),
                          exact_edges=exact_edges)])
    survivor = np.load(work / "clusters" / "survivor.npy", mmap_mode="r")
    exact = np.load(work / "clusters" / "exact.npy", mmap_mode="r")
    summary.exact_duplicates = int(exact.sum())
    summary.near_duplicates = int((np.asarray(survivor) != np.arange(total)).sum()) - summary.exact_duplicates

    ids = _survivor_ids(work, survivor, offsets)
    tasks = []
    for i, (p, offset, n) in enumerate(zip(files, offsets, counts)):
        wanted = np.unique(np.asarray(survivor[offset:offset + n]))
        wanted = wanted[wanted < offset]  # survivors in earlier shards, by id
        tasks.append(WriteJob(index=i, path=Path(p), work=work, out=out, text_field=text_field, offset=offset,
                              survivor_ids={int(s): ids[int(s)] for s in wanted}))
    run_tasks(executor, work, "write", _write_task, tasks, progress)
    remove_partial_parts(out)
    return summary


def _load_edges(work: Path, numbers: list[int]) -> np.ndarray:
    parts = [np.load(work / "edges" / f"bucket-{n:05d}.npy") for n in numbers]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def _verified(executor: Executor, work: Path, pairs: np.ndarray, offsets: tuple[int, ...], threshold: float,
              progress: Progress | None) -> np.ndarray:
    chunks = range(math.ceil(len(pairs) / PAIRS_PER_CHECK))
    for n in chunks:
        if not (work / "verify" / f"pairs-{n:05d}.npy").exists():
            _save(work / "verify" / f"pairs-{n:05d}.npy", pairs[n * PAIRS_PER_CHECK:(n + 1) * PAIRS_PER_CHECK])
    run_tasks(executor, work, "check", _check_task,
              [CheckJob(index=n, work=work, threshold=threshold, offsets=offsets) for n in chunks], progress)
    keep = np.concatenate([np.load(work / "verify" / f"keep-{n:05d}.npy") for n in chunks])
    return pairs[keep]


def _survivor_ids(work: Path, survivor: np.ndarray, offsets: tuple[int, ...]) -> dict[int, str]:
    """Ids of the survivors that some other document names, read shard by shard."""
    named = np.unique(np.asarray(survivor)[np.asarray(survivor) != np.arange(len(survivor))])
    shard_of = np.searchsorted(np.asarray(offsets), named, side="right") - 1
    ids: dict[int, str] = {}
    for shard in np.unique(shard_of).tolist():
        shard_ids = json.loads((work / "signatures" / f"shard-{shard:05d}" / "ids.json").read_text())
        for position in named[shard_of == shard].tolist():
            ids[position] = shard_ids[position - offsets[shard]]
    return ids
