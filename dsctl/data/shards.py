"""Token shards (the `shards` artifact) and the ordered process-pool map the data stages share.

Token shard layout (the shards artifact of docs/ARCHITECTURE.md):

    tokenizer/                 the tokenizer files (dsctl/tokenizer.py)
    train-s00000-00000.arrow ...    Arrow IPC *stream* files: columns id: string,
    validation-s00000-00000.arrow   input_ids: list<int32>; one row per document (sNNNNN:
                                    the corpus shard it came from; index.json lists the files)
    index.json                 vocab size, per-split files with documents/tokens/sha256

Rows are document boundaries; no bos/eos is stored (the training loop adds eos between
documents when it packs). Stream format (not the random-access file format) because that
is what `datasets.Dataset.from_file` memory-maps.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa

from dsctl.data.corpus import ReadStats, iter_rows
from dsctl.files import write_text_atomic

T = TypeVar("T")
R = TypeVar("R")

SHARD_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32()))])


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int | None = None) -> Iterator[R]:
    """`map(fn, items)` over a process pool, results in input order.

    Unlike `Pool.imap`, which drains its input eagerly, at most `in_flight` items are
    submitted ahead of the consumer, so a streamed corpus never piles up in memory.
    Output is identical for any worker count because each item is processed whole by one
    worker and results are yielded in submission order. `workers <= 1` runs in-process.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    limit = in_flight or 2 * workers
    with mp.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TokenShardWriter:
    """Writes `<split>-<prefix>00000.arrow`, `<split>-<prefix>00001.arrow`, ... of at most
    `tokens_per_shard` tokens each (a document is never cut across shards).

    The files are streamed under their own names, not through dsctl.files (which takes a
    file's whole bytes) nor renamed into place: nothing reads them before the index that
    lists them is written, and a task killed part-way has no marker, so its rerun writes
    the same names with the same bytes over whatever it left."""

    def __init__(
        self, directory: Path, split: str, tokens_per_shard: int = 50_000_000, rows_per_batch: int = 1024,
        prefix: str = "",
    ):
        """`prefix` tells apart the files of tasks writing into one directory."""
        self.directory = directory
        self.split = split
        self.prefix = prefix
        self.tokens_per_shard = tokens_per_shard
        self.rows_per_batch = rows_per_batch
        self.files: list[dict[str, Any]] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._ids: list[str] = []
        self._rows: list[list[int]] = []
        self._shard_docs = 0
        self._shard_tokens = 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, doc_id: str, input_ids: list[int]) -> None:
        if self._writer is None or self._shard_tokens >= self.tokens_per_shard:
            self._open_next()
        self._ids.append(doc_id)
        self._rows.append(input_ids)
        self._shard_docs += 1
        self._shard_tokens += len(input_ids)
        if len(self._ids) >= self.rows_per_batch:
            self._flush()

    def write_flat(self, doc_ids: list[str], flat: np.ndarray, offsets: np.ndarray) -> None:
        """Write len(doc_ids) documents at once: document i is flat[offsets[i]:offsets[i+1]]."""
        if not doc_ids:
            return
        if self._writer is None or self._shard_tokens >= self.tokens_per_shard:
            self._open_next()
        self._flush()
        values = pa.array(flat, pa.int32())
        lists = pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), values[offsets[0] : offsets[-1]])
        self._writer.write_batch(pa.record_batch([pa.array(doc_ids, pa.string()), lists], schema=SHARD_SCHEMA))
        self._shard_docs += len(doc_ids)
        self._shard_tokens += int(offsets[-1] - offsets[0])

    def _flush(self) -> None:
        if not self._ids:
            return
        batch = pa.record_batch(
            [pa.array(self._ids, pa.string()), pa.array(self._rows, pa.list_(pa.int32()))], schema=SHARD_SCHEMA
        )
        self._writer.write_batch(batch)
        self._ids, self._rows = [], []

    def _open_next(self) -> None:
        self._close_current()
        path = self.directory / f"{self.split}-{self.prefix}{len(self.files):05d}.arrow"
        self.files.append({"file": path.name, "documents": 0, "tokens": 0, "sha256": ""})
        self._writer = pa.ipc.new_stream(str(path), SHARD_SCHEMA)
        self._shard_docs = 0
        self._shard_tokens = 0

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        entry = self.files[-1]
        entry.update(documents=self._shard_docs, tokens=self._shard_tokens)
        entry["sha256"] = file_sha256(self.directory / entry["file"])

    def close(self, keep_empty: bool = True) -> list[dict[str, Any]]:
        """Finish the last shard. With `keep_empty`, an empty split still gets one (empty)
        shard file so readers never have to special-case a missing split."""
        if not self.files and keep_empty:
            self._open_next()
        self._close_current()
        return self.files


def write_index(directory: Path, vocab_size: int, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    index = {
        "vocab_size": vocab_size,
        "tokenizer": "tokenizer",
        "splits": splits,
        "total_tokens": {name: sum(f["tokens"] for f in files) for name, files in splits.items()},
    }
    write_text_atomic(directory / "index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index


def read_index(directory: Path) -> dict[str, Any]:
    path = directory / "index.json"
    if not path.exists():
        from dsctl.errors import UserError

        raise UserError(f"{directory} is not a token-shards artifact: no index.json")
    return json.loads(path.read_text())


# -- encoding a corpus into token shards ---------------------------------------------------


def is_validation(doc_id: str, fraction: float) -> bool:
    """Deterministic held-out assignment by a hash of the document id (not its position)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


@lru_cache(maxsize=2)
def _processor(model_path: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=model_path)


def _encode_batch(job: tuple[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, offsets) of a batch; runs in a worker, one model load per process."""
    model_path, texts = job
    ids = _processor(model_path).encode(texts)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, np.concatenate(([0], np.cumsum(lengths)))


@dataclass
class EncodeStats:
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "validation": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "validation": 0})
    skipped_empty: int = 0
    bytes: int = 0


def encode_to_shards(
    rows: Iterable[dict],
    model_path: Path,
    writers: dict[str, TokenShardWriter],
    validation_fraction: float,
    workers: int = 1,
    batch_size: int = 256,
    text_field: str = "text",
    progress: Callable[[int], None] | None = None,
) -> EncodeStats:
    """Encode rows on `workers` processes (ordered) into the train/validation writers.

    Documents that encode to nothing (empty text) are skipped and counted. Output does
    not depend on the worker count or the batch size.
    """
    stats = EncodeStats()
    pending: deque = deque()

    def jobs() -> Iterator[tuple[str, list[str]]]:
        for batch in batched(rows, batch_size):
            pending.append([str(row.get("id", "")) for row in batch])
            texts = [row[text_field] for row in batch]
            stats.bytes += sum(len(t.encode("utf-8")) for t in texts)
            yield str(model_path), texts

    for flat, offsets in ordered_map(_encode_batch, jobs(), workers):
        doc_ids = pending.popleft()
        lengths = np.diff(offsets)
        stats.skipped_empty += int((lengths == 0).sum())
        held_out = np.array([is_validation(d, validation_fraction) for d in doc_ids], dtype=bool)
        for split, mask in (("train", ~held_out), ("validation", held_out)):
            keep = np.flatnonzero(mask & (lengths > 0))
            if keep.size == 0:
                continue
            pieces = [flat[offsets[i] : offsets[i + 1]] for i in keep]
            sub_offsets = np.concatenate(([0], np.cumsum(lengths[keep])))
            writers[split].write_flat([doc_ids[i] for i in keep], np.concatenate(pieces), sub_offsets)
            stats.documents[split] += int(keep.size)
            stats.tokens[split] += int(sub_offsets[-1])
        if progress:
            progress(len(doc_ids))
    return stats


@dataclass(frozen=True)
class EncodeJob:
    """One input shard to encode into its own token shard files."""

    index: int
    """The input shard's number (its files are `<split>-sNNNNN-KKKKK.arrow`)."""
    path: Path
    """The shard's row file."""
    out: Path
    """The artifact the token shard files go into."""
    model_path: Path
    """The trained tokenizer.model."""
    validation_fraction: float
    tokens_per_shard: int
    batch_size: int
    """Documents encoded at a time."""


def encode_shard(job: EncodeJob) -> dict[str, Any]:
    """One input shard -> its token shard files; their index entries, the encode and the
    read counts."""
    read = ReadStats()
    writers = {split: TokenShardWriter(job.out, split, job.tokens_per_shard, prefix=f"s{job.index:05d}-")
               for split in ("train", "validation")}
    stats = encode_to_shards(iter_rows([job.path], read), job.model_path, writers, job.validation_fraction,
                             batch_size=job.batch_size)
    files = {split: w.close(keep_empty=False) for split, w in writers.items()}
    return {"files": files, "stats": asdict(stats), "read": asdict(read)}


def merge_encode_stats(parts: Iterable[EncodeStats]) -> EncodeStats:
    total = EncodeStats()
    for part in parts:
        for split in ("train", "validation"):
            total.documents[split] += part.documents[split]
            total.tokens[split] += part.tokens[split]
        total.skipped_empty += part.skipped_empty
        total.bytes += part.bytes
    return total
