"""Corpus artifacts: sharded JSONL (or Parquet) rows with at least `id` and `text`.

Layout (the corpus artifact of docs/ARCHITECTURE.md):

    data/part-00000.jsonl       rows kept by the stage (extra fields carried through)
    rejected/part-00000.jsonl   rows a stage set aside, each with a `reason`

Input row files: JSONL (plain, .gz, .zst), Parquet, and `datasets` Arrow files, all read
as streams. Reading is forgiving in the way a data pipeline must be: a malformed JSON
line, a line that is not UTF-8, a row without text or an empty file is counted in
`ReadStats` and skipped, and a damaged file (a corrupt or truncated archive, a file that
is not what its name says) ends early and is counted and named, never a crash, so one bad
shard cannot lose a night's work.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from dsctl.errors import UserError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
ROW_FILE_SUFFIXES = (*JSONL_SUFFIXES, ".parquet", ".arrow")
"""Row files a corpus may hold: JSONL (plain, gzip, zstd), Parquet, and the Arrow files a
`datasets` folder holds (`Dataset.save_to_disk`, the hub cache)."""

# What a damaged file raises while it is read: a bad gzip or zstd frame, a truncated
# stream, a file that is not Parquet or Arrow at all.
_DAMAGED = (OSError, EOFError, zstandard.ZstdError, pa.ArrowException)


@dataclass
class ReadStats:
    """Counts of what reading had to skip; reported in the stage summary."""

    rows: int = 0
    malformed_json: int = 0
    non_utf8: int = 0
    missing_text: int = 0
    empty_files: int = 0
    damaged_files: int = 0
    """Files that could not be read to their end (their rows before the damage are kept)."""
    damaged_file_names: list[str] = field(default_factory=list)

    def as_dict(self, prefix: str = "read_") -> dict[str, Any]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}

    def merge(self, other: "ReadStats") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def jsonable(value: Any) -> Any:
    """A row read from Parquet, Arrow or `datasets` as JSON-ready data (bytes decoded,
    other values as strings), so every reader hands stages the same kind of row."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def load_dataset(name: str, config: str = "", split: str | None = "train", cache_dir: Path | None = None) -> Any:
    """A `datasets` dataset by hub name or local folder (`save_to_disk` or data files):
    one split, or with split=None a {split name: Dataset} dict of all of them. Every
    failure is one UserError sentence."""
    import datasets

    local = Path(name)
    try:
        if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(local))
            if not isinstance(loaded, datasets.DatasetDict):
                return loaded if split is not None else {"train": loaded}
        else:
            loaded = datasets.load_dataset(name, config or None, cache_dir=str(cache_dir) if cache_dir else None)
        if split is None:
            return dict(loaded)
        if split not in loaded:
            raise UserError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(loaded)})")
        return loaded[split]
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot load this"
        raise UserError(f"could not load dataset '{name}'{f' (split {split!r})' if split else ''}: {exc}") from None


def is_row_file(path: Path) -> bool:
    return path.name.endswith(ROW_FILE_SUFFIXES)


def is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def corpus_files(root: Path, subdir: str = "data") -> list[Path]:
    """The row files of a corpus artifact (or of any directory of row files, e.g. a
    `datasets` folder)."""
    base = root / subdir if (root / subdir).is_dir() else root
    return sorted(p for p in base.rglob("*") if p.is_file() and is_row_file(p))


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


def iter_rows(files: Iterable[Path], stats: ReadStats, text_field: str = "text",
              skipped: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Stream rows from row files, counting and skipping what is unreadable: a bad line is
    skipped, a damaged file ends early and is named in `stats`, and the next file is read.
    `skipped` receives the number (among non-blank lines) of each JSONL line passed over,
    which is what `iter_row_lines` needs to find the same rows again without parsing."""
    for path in files:
        if path.name.endswith(".parquet"):
            rows = _iter_parquet(path, stats, text_field)
        elif path.name.endswith(".arrow"):
            rows = _iter_arrow(path, stats, text_field)
        else:
            rows = _iter_jsonl(path, stats, text_field, skipped)
        try:
            yield from rows
        except _DAMAGED:
            stats.damaged_files += 1
            stats.damaged_file_names.append(str(path))


def _open_lines(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _nonblank_lines(path: Path) -> Iterator[bytes]:
    with _open_lines(path) as fh:
        for raw in fh:
            if raw.strip():
                yield raw


def _iter_jsonl(path: Path, stats: ReadStats, text_field: str, skipped: list[int] | None) -> Iterator[dict[str, Any]]:
    seen_any = False
    for number, raw in enumerate(_nonblank_lines(path)):
        seen_any = True
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            stats.non_utf8 += 1
        except json.JSONDecodeError:
            stats.malformed_json += 1
        else:
            if isinstance(row, dict) and isinstance(row.get(text_field), str):
                stats.rows += 1
                yield row
                continue
            stats.missing_text += 1
        if skipped is not None:
            skipped.append(number)
    if not seen_any:
        stats.empty_files += 1


def iter_row_lines(path: Path, skipped: Iterable[int]) -> Iterator[bytes]:
    """The rows of one JSONL file as their lines' bytes (line ending cut), unparsed: the
    rows `iter_rows` yields for it, given the `skipped` line numbers that reading recorded
    (a damaged file ends at the same place). For a stage that passes rows through unchanged."""
    passed_over = set(skipped)
    try:
        for number, raw in enumerate(_nonblank_lines(path)):
            if number not in passed_over:
                yield raw.rstrip(b"\r\n")
    except _DAMAGED:
        return


def _table_rows(batches: Iterable[pa.RecordBatch], stats: ReadStats, text_field: str) -> Iterator[dict[str, Any]]:
    seen_any = False
    for batch in batches:
        for row in batch.to_pylist():
            seen_any = True
            if not isinstance(row.get(text_field), str):
                stats.missing_text += 1
                continue
            stats.rows += 1
            yield row
    if not seen_any:
        stats.empty_files += 1


def _iter_parquet(path: Path, stats: ReadStats, text_field: str) -> Iterator[dict[str, Any]]:
    yield from _table_rows(pq.ParquetFile(path).iter_batches(batch_size=4096), stats, text_field)


def _iter_arrow(path: Path, stats: ReadStats, text_field: str) -> Iterator[dict[str, Any]]:
    """A `datasets` Arrow file: the IPC stream format (the file format is read as well)."""
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = pa.ipc.open_file(source)
            reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        yield from _table_rows(reader, stats, text_field)


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


class PartFile:
    """One output part of a sharded task (`data/part-00007.jsonl` for input shard 7):
    created at its first row, so a shard with nothing to write leaves no file, written
    under a temporary name and renamed into place by `close`, so a killed task never
    leaves a part that looks complete. Rows are written as ShardWriter writes them
    (compact JSON), lines passed through unchanged as they came."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self._fh = path, 0, None

    def write(self, row: dict[str, Any]) -> None:
        self.write_line(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    def write_line(self, line: bytes) -> None:
        """A row already in JSON, as UTF-8 (a line passed through unchanged)."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path.with_name(self.path.name + ".tmp"), "wb")
        self._fh.write(line + b"\n")
        self.rows += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            os.replace(self._fh.name, self.path)
            self._fh = None

    def __enter__(self) -> "PartFile":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._fh is not None:  # the task failed: leave the temporary file unpublished
            self._fh.close()
            self._fh = None


def part_name(shard: int) -> str:
    """The output part of input shard `shard` in a sharded stage's data/ and rejected/."""
    return f"part-{shard:05d}.jsonl"


def remove_partial_parts(root: Path) -> None:
    """Drop the temporary files of tasks killed before their rename (after a resumed job)."""
    for leftover in root.rglob("*.jsonl.tmp"):
        leftover.unlink()
