"""Near-duplicate removal: dsctl vs datasketch vs rensa on one planted corpus, one run.

    pip install -e '.[bench]'                        # the peers: rensa, datatrove (+ spaCy)
    python benchmarks/bench_dedup.py                 # 100k documents, ~5 minutes (datatrove is most of it)
    python benchmarks/bench_dedup.py --docs 20000 --workers 2
    python benchmarks/bench_dedup.py --methods rensa,pipeline   # the stage against its target peer

Every method sees the same texts and the same normalization and word-5-gram shingles,
uses 128 permutations and the same LSH banding, 16 bands × 8 rows (rensa needs the
band count to divide 128; dsctl's default at threshold 0.8 is 18 × 7, which the stage
pipeline row uses), and runs as its own subprocess so its peak RSS is its own. Timed work, from texts already in memory:

- dsctl (1 process): word/shingle hashing, MinHash signatures, band keys, candidate
  pairs for the whole batch (`dsctl.data.minhash`: `hash_batch`, `MinHasher`, `band_keys`,
  `candidate_pairs`).
- datasketch / rensa per document: build the shingle strings, `MinHash`/`RMinHash`,
  `lsh.query` then `lsh.insert` (the streaming dedup loop of both READMEs).
- rensa bulk: shingle strings, `RMinHash.digest_matrix_from_token_sets` and
  `RMinHashLSH.insert_matrix_and_query_duplicate_flags` (its fastest path).
- datatrove 4-step: datatrove's MinHash pipeline (signatures, buckets, cluster, filter)
  from the same JSONL files with `LocalPipelineExecutor` and `--workers` processes, 16
  buckets × 8 hashes of 5-gram word shingles (spaCy's English tokenizer, datatrove's
  default; 64-bit sha1 shingle hashes, since its default xxhash path fails on xxhash 4.x);
  removed rows name their cluster's kept row through the saved cluster ids.
- dsctl stage pipeline: the dedup stage's whole sharded job from JSONL files on disk with
  `--workers` processes (`dsctl.data.dedup.deduplicate`): signatures spilled per shard and
  band, bucket edges, true-Jaccard check, union-find, write outputs. Its RSS does not hold
  the corpus text; the in-memory methods' does.

Peak RSS is each method process's VmHWM. Wall time and docs/s move with the load of a
shared machine; docs per CPU-second is the steadier comparison.

Precision/recall are measured against the planted sidecar with
`dsctl.data.audit.planted_quality` (ground truth documented there): a planted near-dup
of true Jaccard >= threshold must be merged with its original; a removal is correct
when the survivor is in the removed row's planted family.
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

from benchmarks.dedup_corpus import synthetic_corpus  # noqa: E402
from dsctl.data.audit import planted_quality, read_decisions  # noqa: E402
from dsctl.data.corpus import ReadStats, ShardWriter, corpus_files, iter_rows  # noqa: E402
from dsctl.data.dedup import DedupParams, deduplicate  # noqa: E402
from dsctl.data.executor import open_executor  # noqa: E402
from dsctl.data.minhash import (  # noqa: E402
    MinHasher,
    band_keys,
    candidate_pairs,
    hash_batch,
    normalize_text,
    shingles_from_words,
)

THRESHOLD, NUM_PERM, BANDS, ROWS = 0.8, 128, 16, 8


def shingles(text: str) -> list[str]:
    words = normalize_text(text).split(" ")
    return [" ".join(words[i : i + 5]) for i in range(max(len(words) - 4, 1))]


def load(corpus: Path, limit: int) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for row in iter_rows(corpus_files(corpus), ReadStats()):
        if limit and len(ids) >= limit:
            break
        ids.append(row["id"])
        texts.append(row["text"])
    return ids, texts


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (steadier than wall time on a
    shared machine)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_dsctl(texts: list[str], **_) -> dict:
    import numpy as np

    start, cpu = time.perf_counter(), cpu_seconds()
    hasher, keys = MinHasher(NUM_PERM, 1), []
    for i in range(0, len(texts), 512):
        words, counts, _ = hash_batch(texts[i : i + 512])
        keys.append(band_keys(hasher.signatures_from_shingles(*shingles_from_words(words, counts)), BANDS, ROWS))
    pairs = candidate_pairs(np.concatenate(keys))
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu,
            "candidate_pairs": int(len(pairs))}


def run_streaming_peer(texts: list[str], ids: list[str], make_hash, lsh) -> dict:
    decisions: dict[str, tuple[str, str] | None] = {}
    start, cpu = time.perf_counter(), cpu_seconds()
    for i, text in enumerate(texts):
        m = make_hash(shingles(text))
        found = lsh.query(m)
        if found:
            decisions[ids[i]] = ("near_duplicate", ids[min(found)])
        else:
            lsh.insert(i, m)
            decisions[ids[i]] = None
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu, "decisions": decisions}


def run_datasketch(texts, ids, **_) -> dict:
    from datasketch import MinHash, MinHashLSH

    def make(sh):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([s.encode("utf-8") for s in sh])
        return m

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    return run_streaming_peer(texts, ids, make, lsh)


def run_rensa(texts, ids, **_) -> dict:
    from rensa import RMinHash, RMinHashLSH

    def make(sh):
        m = RMinHash(num_perm=NUM_PERM, seed=1)
        m.update(sh)
        return m

    return run_streaming_peer(texts, ids, make, RMinHashLSH(THRESHOLD, NUM_PERM, BANDS))


def run_rensa_bulk(texts, **_) -> dict:
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)
    start, cpu = time.perf_counter(), cpu_seconds()
    flagged = 0
    for i in range(0, len(texts), 4096):
        matrix = RMinHash.digest_matrix_from_token_sets([shingles(t) for t in texts[i : i + 4096]], NUM_PERM, 1)
        flagged += sum(lsh.insert_matrix_and_query_duplicate_flags(matrix, start_key=i))
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu, "flagged": flagged}


def run_pipeline(corpus: Path, workers: int, out: Path, executor: str = "local") -> dict:
    files = corpus_files(corpus)
    start, cpu = time.perf_counter(), cpu_seconds()
    with open_executor(executor, workers=workers) as ex:
        summary = deduplicate(files, out / "work", out, DedupParams(threshold=THRESHOLD), ex)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    decisions = read_decisions(corpus_files(out), corpus_files(out, "rejected"))
    return {"seconds": seconds, "cpu_seconds": cpu, "decisions": decisions, "bands": [summary.bands, summary.rows]}


def run_datatrove(corpus: Path, workers: int, out: Path) -> dict:
    """datatrove's four-step MinHash pipeline (signatures, buckets, cluster, filter) on the
    corpus files with LocalPipelineExecutor: 5-gram word shingles, 16 buckets × 8 hashes,
    64-bit hashes; one task per input file. Cluster ids are saved so every removed
    document can name the kept member of its cluster (datatrove itself keeps one per
    cluster and records no survivor)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.typeshelper import Languages

    data = str(corpus / "data")
    tasks = len(corpus_files(corpus))
    # sha1: datatrove 0.10.1's default xxhash path hands xxhash 4.x a str, which it rejects.
    config = MinhashConfig(n_grams=5, num_buckets=BANDS, hashes_per_bucket=ROWS,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    logs, sigs, buckets, remove = (str(out / name) for name in ("logs", "sigs", "buckets", "remove"))
    start, cpu = time.perf_counter(), cpu_seconds()
    steps = [
        ([JsonlReader(data), MinhashDedupSignature(output_folder=sigs, config=config, language=Languages.english)],
         tasks),
        ([MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)], config.num_buckets),
        ([MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=config, save_cluster_id=True)], 1),
        ([JsonlReader(data), MinhashDedupFilter(input_folder=remove, load_cluster_ids=True,
                                                exclusion_writer=JsonlWriter(str(out / "removed"))),
          JsonlWriter(str(out / "kept"))], tasks),
    ]
    for number, (pipeline, n_tasks) in enumerate(steps):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=workers, logging_dir=f"{logs}/{number}",
                              start_method="fork").run()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu

    def rows(folder: str):
        for path in sorted(Path(out / folder).rglob("*.jsonl.gz")):
            import gzip

            with gzip.open(path, "rt") as fh:
                yield from (json.loads(line) for line in fh)

    kept_in_cluster, decisions = {}, {}
    for row in rows("kept"):
        decisions[row["id"]] = None
        cluster = row.get("metadata", {}).get("minhash_cluster_id")
        if cluster is not None:
            kept_in_cluster[cluster] = row["id"]
    for row in rows("removed"):
        cluster = row.get("metadata", {}).get("minhash_cluster_id")
        decisions[row["id"]] = ("near_duplicate", kept_in_cluster.get(cluster, ""))
    return {"seconds": seconds, "cpu_seconds": cpu, "decisions": decisions}


def peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would include the parent's
    high-water mark, which Linux carries across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def method_main(args: argparse.Namespace) -> None:
    """One method in this (sub)process; prints one JSON line."""
    corpus = Path(args.corpus)
    if args.method == "build":
        build_corpus(args.limit, corpus)
        print(json.dumps({}))
        return
    if args.method in ("pipeline", "datatrove"):
        run = run_pipeline if args.method == "pipeline" else run_datatrove
        res = run(corpus, args.workers, Path(args.out))
        docs = len(res["decisions"])
    else:
        ids, texts = load(corpus, args.limit)
        runner = {"dsctl": run_dsctl, "datasketch": run_datasketch, "rensa": run_rensa, "rensa-bulk": run_rensa_bulk}
        res = runner[args.method](texts=texts, ids=ids)
        docs = len(texts)
    decisions = res.pop("decisions", None)
    if decisions is not None:
        planted = {}
        with open(corpus / "planted.jsonl") as fh:
            for line in fh:
                row = json.loads(line)
                planted[row["id"]] = row
        res["quality"] = planted_quality(planted, decisions, THRESHOLD)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res.update(
        docs=docs, docs_per_s=docs / res["seconds"], docs_per_cpu_s=docs / max(res["cpu_seconds"], 1e-9),
        peak_rss_mb=peak_rss_mb(), child_peak_rss_mb=children / 1024,
    )
    print(json.dumps(res))


def build_corpus(n_docs: int, directory: Path) -> None:
    try:  # the default world, when it can make a planted corpus of the requested size
        from dsctl.data import world  # noqa: F401

        print("note: dsctl.data.world exists; this benchmark still uses its own generator for a fixed size")
    except ImportError:
        pass
    rows, planted = synthetic_corpus(n_docs, seed=0)
    with ShardWriter(directory / "data", 25_000) as writer:
        for row in rows:
            writer.write(row)
    with open(directory / "planted.jsonl", "w") as fh:
        for row in planted:
            fh.write(json.dumps(row) + "\n")


def run_method(method: str, corpus: Path, limit: int, workers: int, out: Path) -> dict | None:
    cmd = [sys.executable, __file__, "--method", method, "--corpus", str(corpus), "--limit", str(limit),
           "--workers", str(workers), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        print(f"  {method}: failed ({reason})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--datasketch-docs", type=int, default=20_000,
                        help="datasketch is ~10x slower: it runs on the first N documents (0 = all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--methods", default="",
                        help="comma-separated subset to run (dsctl, datasketch, rensa, rensa-bulk, datatrove, "
                             "pipeline); default all that are installed")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        method_main(args)
        return
    report(args)


def report(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        t0 = time.perf_counter()
        run_method("build", corpus, args.docs, 1, corpus)  # in a subprocess: keeps this one small
        print(f"corpus: {args.docs:,} docs (planted near/exact dups) built in {time.perf_counter() - t0:.1f}s; "
              f"cpus={os.cpu_count()} workers={args.workers}")
        try:
            from importlib.metadata import version

            import rensa  # noqa: F401

            rensa_version = version("rensa")
        except ImportError:
            rensa_version = None
        from importlib.metadata import version

        plan = [("dsctl", "dsctl (1 process, in memory)", 0),
                ("datasketch", f"datasketch {version('datasketch')} per-doc", args.datasketch_docs)]
        if rensa_version:
            plan += [("rensa", f"rensa {rensa_version} per-doc", 0),
                     ("rensa-bulk", f"rensa {rensa_version} bulk matrix", 0)]
        else:
            print("rensa is not installed (pip install rensa); skipped")
        try:
            plan.append(("datatrove", f"datatrove {version('datatrove')} 4-step ({args.workers} workers, disk)", 0))
        except Exception:  # noqa: BLE001 (an optional peer)
            print("datatrove is not installed (pip install datatrove spacy); skipped")
        plan.append(("pipeline", f"dsctl stage ({args.workers} workers, disk, 18x7)", 0))
        if args.methods:
            plan = [step for step in plan if step[0] in args.methods.split(",")]
        results = {}
        for method, label, limit in plan:
            res = run_method(method, corpus, limit, args.workers, Path(tmp) / f"out-{method}")
            if res:
                results[method] = (label, res)
        print(f"\n{'method':48s} {'docs':>8s} {'docs/s':>9s} {'docs/CPU-s':>10s} "
              f"{'peak RSS MB':>11s} {'precision':>9s} {'recall':>7s}")
        for label, res in results.values():
            q = res.get("quality", {})
            rss = res["peak_rss_mb"]
            prec = f"{q['precision']:.4f}" if q else "-"
            rec = f"{q['recall']:.4f}" if q else "-"
            print(f"{label:48s} {res['docs']:8,d} {res['docs_per_s']:9,.0f} {res['docs_per_cpu_s']:10,.0f} "
                  f"{rss:11.0f} {prec:>9s} {rec:>7s}")
        print()
        for ours in ("dsctl", "pipeline"):
            for peer in ("datasketch", "rensa", "rensa-bulk", "datatrove"):
                if ours in results and peer in results:
                    a, b = results[ours][1], results[peer][1]
                    print(f"{ours} / {peer}: {a['docs_per_s'] / b['docs_per_s']:.1f}x docs/s, "
                          f"{a['docs_per_cpu_s'] / b['docs_per_cpu_s']:.1f}x docs/CPU-s")
        if "pipeline" in results:
            res = results["pipeline"][1]
            print(f"pipeline quality: {json.dumps(res['quality'])}")
            print(f"pipeline worker peak RSS (upper bound, shared pages included): {res['child_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
