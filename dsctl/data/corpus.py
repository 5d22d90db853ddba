"""Corpus artifacts: sharded JSONL (or Parquet) rows with at least `id` and `text`.

Layout (the corpus artifact of docs/ARCHITECTURE.md):

    data/part-00000.jsonl       rows kept by the stage (extra fields carried through)
    rejected/part-00000.jsonl   rows a stage set aside, each with a `reason`

Reading is streaming and forgiving in the way a data pipeline must be: a malformed JSON
line, a line that is not UTF-8, a row without text or an empty file is counted in
`ReadStats` and skipped, never a crash, so one bad line cannot lose a night's work.
"""

from __future__ import annotations

import glob
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq

from dsctl.errors import UserError

ROW_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class ReadStats:
    """Counts of what reading had to skip; reported in the stage summary."""

    rows: int = 0
    malformed_json: int = 0
    non_utf8: int = 0
    missing_text: int = 0
    empty_files: int = 0

    def as_dict(self, prefix: str = "read_") -> dict[str, int]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def corpus_files(root: Path, subdir: str = "data") -> list[Path]:
    """The row files of a corpus artifact (or of any directory of JSONL/Parquet files)."""
    base = root / subdir if (root / subdir).is_dir() else root
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix in ROW_FILE_SUFFIXES)
    return files


def expand_paths(patterns: Iterable[str]) -> list[Path]:
    """Glob patterns (and plain files/dirs) to a sorted, de-duplicated file list."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise UserError(f"no files match '{pattern}'")
        for match in matches:
            path = Path(match)
            found.extend(corpus_files(path, subdir="") if path.is_dir() else [path])
    return sorted(dict.fromkeys(found))


def iter_rows(files: Iterable[Path], stats: ReadStats, text_field: str = "text") -> Iterator[dict[str, Any]]:
    """Stream rows from JSONL/Parquet files, counting and skipping what is unreadable."""
    for path in files:
        if path.suffix == ".parquet":
            yield from _iter_parquet(path, stats, text_field)
        else:
            yield from _iter_jsonl(path, stats, text_field)


def _iter_jsonl(path: Path, stats: ReadStats, text_field: str) -> Iterator[dict[str, Any]]:
    seen_any = False
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            seen_any = True
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.non_utf8 += 1
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                stats.malformed_json += 1
                continue
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                stats.missing_text += 1
                continue
            stats.rows += 1
            yield row
    if not seen_any:
        stats.empty_files += 1


def _iter_parquet(path: Path, stats: ReadStats, text_field: str) -> Iterator[dict[str, Any]]:
    table = pq.ParquetFile(path)
    if table.metadata.num_rows == 0:
        stats.empty_files += 1
        return
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            if not isinstance(row.get(text_field), str):
                stats.missing_text += 1
                continue
            stats.rows += 1
            yield row


class ShardWriter:
    """Writes rows to `<dir>/part-00000.jsonl`, `part-00001.jsonl`, ... in order.

    Rows are written as compact UTF-8 JSON, one per line, so output is byte-identical for
    identical input (determinism is part of the store's contract).
    """

    def __init__(self, directory: Path, rows_per_shard: int = 50_000):
        self.directory = directory
        self.rows_per_shard = rows_per_shard
        self.rows = 0
        self._shard = -1
        self._in_shard = 0
        self._fh = None
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is None or self._in_shard == self.rows_per_shard:
            self._open_next()
        self._fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.rows += 1
        self._in_shard += 1

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._shard += 1
        self._in_shard = 0
        self._fh = open(self.directory / f"part-{self._shard:05d}.jsonl", "w", encoding="utf-8")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
