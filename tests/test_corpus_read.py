"""Corpus input: JSONL (plain, gzip, zstd), Parquet and `datasets` folders stream the same
rows, and a damaged file is counted and named while the other files are read."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from dsctl.data.corpus import ReadStats, corpus_files, iter_rows

ROWS = [{"id": f"d{i}", "text": f"document number {i} " * 3} for i in range(50)]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_every_input_format_streams_the_same_rows(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_jsonl(ROWS[:10]))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(ROWS[10:20])))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(ROWS[20:30])))
    pq.write_table(pa.Table.from_pylist(ROWS[30:40]), tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS[40:]).save_to_disk(str(tmp_path / "e_dataset"))
    files = corpus_files(tmp_path, subdir="")
    assert [f.name for f in files][:4] == ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"]
    assert files[4].suffix == ".arrow" and files[4].parent.name == "e_dataset"
    stats = ReadStats()
    got = [{"id": r["id"], "text": r["text"]} for r in iter_rows(files, stats)]
    assert got == ROWS and stats.rows == 50 and stats.damaged_files == 0


def test_a_damaged_file_is_counted_and_named_and_the_others_are_read(tmp_path):
    good = _jsonl(ROWS[:20])
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(good)[:-30])  # truncated archive
    (tmp_path / "b.parquet").write_bytes(b"this is not parquet")
    (tmp_path / "c.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage frame")
    (tmp_path / "d.jsonl").write_bytes(_jsonl(ROWS[20:25]))
    stats = ReadStats()
    rows = list(iter_rows(corpus_files(tmp_path, subdir=""), stats))
    assert rows[-5:] == ROWS[20:25]
    assert stats.damaged_files == 3
    assert [Path(n).name for n in stats.damaged_file_names] == ["a.jsonl.gz", "b.parquet", "c.jsonl.zst"]
