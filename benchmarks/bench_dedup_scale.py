"""Dedup's memory and throughput as the corpus grows: peak RSS and docs/s at 100k, 300k, 1M.

    python benchmarks/bench_dedup_scale.py                       # 100k, 300k, 1M documents
    python benchmarks/bench_dedup_scale.py --sizes 100000 --executor ray

The corpora are generated here, never committed: blocks of 100k documents from
`benchmarks.dedup_corpus.synthetic_corpus` (seed = block number, ids prefixed by block;
planted near duplicates and exact copies inside each block), written once as 50k-row JSONL
shards, so the 300k corpus is the first three blocks of the 1M one. Each size runs the
dedup stage's whole job (`dsctl.data.dedup.deduplicate`, default parameters, threshold
0.8) in a fresh subprocess, and reports its wall time, docs/s, docs per CPU-second
(workers included), the driver's peak RSS (VmHWM) and the largest worker's peak RSS, and
precision/recall against the planted sidecars. "Bounded memory" means the peaks stay
nearly flat while the corpus grows 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCK = 100_000


def build_block(block: int, directory: Path) -> None:
    from benchmarks.dedup_corpus import synthetic_corpus
    from dsctl.data.corpus import ShardWriter

    rows, planted = synthetic_corpus(BLOCK, seed=block)
    prefix = f"b{block:02d}-"
    with ShardWriter(directory / "data", 50_000) as writer:
        for row in rows:
            writer.write({**row, "id": prefix + row["id"]})
    with open(directory / "planted.jsonl", "w") as fh:
        for row in planted:
            fh.write(json.dumps({**row, "id": prefix + row["id"], "of": prefix + row["of"]}) + "\n")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_size(blocks: list[Path], work: Path, workers: int, executor: str) -> dict:
    from dsctl.data.audit import planted_quality, read_decisions
    from dsctl.data.corpus import corpus_files
    from dsctl.data.dedup import DedupParams, deduplicate
    from dsctl.data.executor import open_executor

    files = [f for block in blocks for f in corpus_files(block)]
    start, t0 = time.perf_counter(), os.times()
    with open_executor(executor, workers=workers) as ex:
        summary = deduplicate(files, work / "work", work / "out", DedupParams(), ex)
    seconds, t1 = time.perf_counter() - start, os.times()
    cpu = sum(getattr(t1, f) - getattr(t0, f) for f in ("user", "system", "children_user", "children_system"))
    driver, worker = peak_rss_mb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    planted = {}
    for block in blocks:
        for line in open(block / "planted.jsonl"):
            row = json.loads(line)
            planted[row["id"]] = row
    decisions = read_decisions(corpus_files(work / "out"), corpus_files(work / "out", "rejected"))
    quality = planted_quality(planted, decisions, 0.8)
    return {"docs": summary.documents, "seconds": seconds, "cpu_seconds": cpu, "driver_mb": driver,
            "worker_mb": worker, "precision": quality["precision"], "recall": quality["recall"],
            "exact_recall": quality["exact_dup_recall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--block", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.block:  # subprocess: write one block
        number, directory = args.block.split(":", 1)
        build_block(int(number), Path(directory))
        return
    if args.run:  # subprocess: one size
        spec = json.loads(args.run)
        print(json.dumps(run_size([Path(b) for b in spec["blocks"]], Path(spec["work"]), args.workers, args.executor)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blocks = []
        for block in range(max(args.sizes) // BLOCK):
            blocks.append(tmp / f"block{block:02d}")
            subprocess.run([sys.executable, __file__, "--block", f"{block}:{blocks[-1]}"], check=True)
        print(f"{'docs':>9s} {'wall s':>7s} {'docs/s':>7s} {'docs/CPU-s':>10s} {'driver MB':>9s} {'worker MB':>9s} "
              f"{'precision':>9s} {'recall':>6s}   ({args.executor}, {args.workers} workers)")
        for size in args.sizes:
            spec = {"blocks": [str(b) for b in blocks[: size // BLOCK]], "work": str(tmp / f"run{size}")}
            proc = subprocess.run([sys.executable, __file__, "--run", json.dumps(spec), "--workers", str(args.workers),
                                   "--executor", args.executor], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{r['docs']:9,d} {r['seconds']:7.1f} {r['docs'] / r['seconds']:7,.0f} "
                  f"{r['docs'] / r['cpu_seconds']:10,.0f} {r['driver_mb']:9.0f} {r['worker_mb']:9.0f} "
                  f"{r['precision']:9.4f} {r['recall']:6.4f}", flush=True)
            subprocess.run(["rm", "-rf", spec["work"]], check=True)


if __name__ == "__main__":
    main()
