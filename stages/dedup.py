"""dedup: drop exact and near-duplicate documents (MinHash LSH + true Jaccard check).

Reads a corpus, writes a corpus:

    data/part-*.jsonl       one survivor per duplicate cluster (the first in input order)
    rejected/part-*.jsonl   the others, with reason "exact_duplicate" | "near_duplicate"
                            and `duplicate_of` = the survivor's id
    planted.jsonl           copied through if the input has one (for measurement)

Exact duplicates are rows whose casefolded, whitespace-collapsed text is identical. Near
duplicates are documents whose word-5-gram shingle sets have Jaccard >= `threshold`;
MinHash + LSH banding finds the candidates, and (by default) each candidate pair is then
checked by its true Jaccard. The work streams over the files (only per-document digests
and band keys stay in memory) and runs on `workers` processes; the result is the same
for any worker count. See dsctl/data/dedup.py for the algorithm.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from dsctl.data.config import DataWorkConfig, ShardOutputConfig
from dsctl.data.corpus import ShardWriter, corpus_files
from dsctl.data.dedup import DedupParams, RunOptions, find_duplicates, summary, write_decisions
from dsctl.errors import UserError
from dsctl.stage import Input, StageContext, StageSpec


@dataclass
class DedupConfig(DedupParams, DataWorkConfig, ShardOutputConfig):
    """The algorithm's parameters (dsctl.data.dedup.DedupParams) and how to run it."""


def run(ctx: StageContext) -> dict:
    cfg: DedupConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no JSONL/Parquet files under data/ to deduplicate")
    options = RunOptions(workers=cfg.workers or os.cpu_count() or 1, batch_size=cfg.docs_per_batch)
    with ctx.progress(None, "minhash", unit="doc") as bar:
        result = find_duplicates(files, cfg, options, progress=bar.advance, seed=ctx.seed)
    with ctx.progress(result.documents, "write", unit="doc") as bar, \
            ShardWriter(ctx.out / "data", cfg.rows_per_shard) as kept, \
            ShardWriter(ctx.out / "rejected", cfg.rows_per_shard) as rejected:
        write_decisions(files, result, kept, rejected, progress=bar.advance)
    if (source.path / "planted.jsonl").exists():
        shutil.copyfile(source.path / "planted.jsonl", ctx.out / "planted.jsonl")
    metrics = summary(result)
    ctx.info(
        f"kept {metrics['kept']:,} of {metrics['documents']:,} "
        f"({metrics['removed_exact_duplicate']:,} exact, {metrics['removed_near_duplicate']:,} near duplicates)"
    )
    return metrics


STAGE = StageSpec(
    name="dedup",
    version=1,
    config=DedupConfig,
    run=run,
    output="corpus",
    inputs={"corpus": Input("corpus", help="the corpus to deduplicate")},
    help="Remove exact and near-duplicate documents with MinHash LSH and a true-Jaccard check. "
    "Survivors are the first copy in input order; removed rows go to rejected/ with duplicate_of.",
    example="dsctl dedup --from mini_r1:clean --set threshold=0.85",
)
