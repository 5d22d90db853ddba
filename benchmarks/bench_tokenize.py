"""Encode throughput: the tokenize stage's encode path vs sentencepiece's own batch encode.

    python benchmarks/bench_tokenize.py               # 20 MB of default-world text
    python benchmarks/bench_tokenize.py --mb 50 --workers 4

Same text, same model (a 4096-piece BPE trained here), same run:

- dsctl stage path: `dsctl.data.shards.encode_to_shards` from JSONL files on disk with
  `--workers` processes: read rows, encode (ordered), write Arrow IPC shards with the
  validation split — everything the stage does after training.
- dsctl encode only: the same worker pool over in-memory texts, returning flat int32
  arrays (no file I/O), to separate encoding from reading/writing.
- sentencepiece: `sp.encode(texts, num_threads=--workers)` over in-memory texts, and
  single-threaded.

MB/s counts UTF-8 bytes of input text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sentencepiece as spm  # noqa: E402

from dsctl.data.corpus import ReadStats, ShardWriter, iter_rows  # noqa: E402
from dsctl.data.shards import TokenShardWriter, _encode_batch, batched, encode_to_shards, ordered_map  # noqa: E402
from dsctl.tokenizer import Tokenizer  # noqa: E402


def build_texts(target_mb: float) -> list[dict]:
    """Default-world documents (two seeds), repeated with new ids up to `target_mb`."""
    from dsctl.data.world import build_world

    base = [row["text"] for seed in (0, 1) for row in build_world(seed).rows]
    rows, size = [], 0
    while size < target_mb * 1e6:
        text = base[len(rows) % len(base)]
        rows.append({"id": f"doc-{len(rows)}", "text": text})
        size += len(text.encode("utf-8"))
    return rows


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds): on a shared machine the CPU figure is the steadier one."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=20.0, help="megabytes of text to encode")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()

    rows = build_texts(args.mb)
    texts = [r["text"] for r in rows]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = Tokenizer.train(texts[: len(texts) // 4], args.vocab_size, tmp / "tok", seed=0)
        model = tmp / "tok" / "tokenizer.model"
        with ShardWriter(tmp / "corpus", 20_000) as writer:
            for row in rows:
                writer.write(row)
        files = sorted((tmp / "corpus").glob("*.jsonl"))
        print(f"{len(texts):,} documents, {mb:.1f} MB, vocab {tok.vocab_size}, workers={args.workers}, "
              f"cpus={os.cpu_count()}")

        def stage_path() -> None:
            writers = {s: TokenShardWriter(tmp / "shards", s) for s in ("train", "validation")}
            stats = encode_to_shards(iter_rows(files, ReadStats()), model, writers, 0.01, workers=args.workers)
            for w in writers.values():
                w.close()
            stage_path.tokens = stats.tokens["train"] + stats.tokens["validation"]

        def encode_only() -> None:
            jobs = ((str(model), batch) for batch in batched(texts, 256))
            encode_only.tokens = sum(int(flat.size) for flat, _ in ordered_map(_encode_batch, jobs, args.workers))

        sp = spm.SentencePieceProcessor(model_file=str(model))
        results = {
            "dsctl stage path (read+encode+write)": timed(stage_path),
            "dsctl encode only (process pool)": timed(encode_only),
            f"sentencepiece encode(list, num_threads={args.workers})":
                timed(lambda: sp.encode(texts, num_threads=args.workers)),
            "sentencepiece encode(list, num_threads=1)": timed(lambda: sp.encode(texts, num_threads=1)),
        }
        reference = sp.encode(texts, num_threads=args.workers)
        assert stage_path.tokens == encode_only.tokens == sum(len(x) for x in reference), "token counts differ"
        print(f"{'path':52s} {'wall s':>7s} {'MB/s':>7s} {'CPU s':>7s} {'MB/CPU-s':>9s}")
        for name, (wall, cpu) in results.items():
            print(f"{name:52s} {wall:7.2f} {mb / wall:7.2f} {cpu:7.2f} {mb / max(cpu, 1e-9):9.2f}")
        sp_wall, sp_cpu = results[f"sentencepiece encode(list, num_threads={args.workers})"]
        for name in ("dsctl stage path (read+encode+write)", "dsctl encode only (process pool)"):
            wall, cpu = results[name]
            print(f"{name} / sentencepiece {args.workers}-thread: {sp_wall / wall:.2f}x MB/s, "
                  f"{sp_cpu / cpu:.2f}x MB/CPU-s")
        print(json.dumps({"mb": round(mb, 2), "tokens": stage_path.tokens,
                          "bytes_per_token": round(mb * 1e6 / stage_path.tokens, 3)}))


if __name__ == "__main__":
    main()
