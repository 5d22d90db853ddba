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

from dsctl.data.corpus import ShardWriter, corpus_files
from dsctl.data.dedup import DedupParams, RunOptions, find_duplicates, summary, write_decisions
from dsctl.errors import UserError
from dsctl.stage import Input, StageContext, StageSpec


@dataclass
class DedupConfig:
    threshold: float = 0.8
    """Jaccard of word-5-gram shingle sets at or above which two documents are near duplicates."""
    num_perm: int = 128
    """MinHash permutations per document (more = better estimates, slower)."""
    bands: int = 0
    """LSH bands; 0 chooses bands and rows from the threshold (18×7 at 0.8)."""
    rows: int = 0
    """Signature values per LSH band; 0 chooses them with `bands`."""
    verify_jaccard: bool = True
    """Check each LSH candidate pair by its true shingle Jaccard before removing anything."""
    false_negative_weight: float = 0.99
    """When choosing bands×rows: weight of missed pairs vs. extra candidates (0..1)."""
    workers: int = 0
    """Worker processes; 0 = one per CPU core. Does not change the result."""
    batch_size: int = 512
    """Documents per hashing batch (memory vs. per-batch overhead). Does not change the result."""
    rows_per_shard: int = 50_000
    """Rows per output JSONL shard."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if (self.bands == 0) != (self.rows == 0):
            raise ValueError("set both bands and rows, or neither (0 = chosen from the threshold)")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if not 0.0 <= self.false_negative_weight <= 1.0:
            raise ValueError(f"false_negative_weight must be in [0, 1], got {self.false_negative_weight}")


def run(ctx: StageContext) -> dict:
    cfg: DedupConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no JSONL/Parquet files under data/ to deduplicate")
    params = DedupParams(
        threshold=cfg.threshold, num_perm=cfg.num_perm, bands=cfg.bands, rows=cfg.rows,
        verify_jaccard=cfg.verify_jaccard, false_negative_weight=cfg.false_negative_weight,
        seed=ctx.seed,
    )
    options = RunOptions(workers=cfg.workers or os.cpu_count() or 1, batch_size=cfg.batch_size)
    with ctx.progress(None, "minhash", unit="doc") as bar:
        result = find_duplicates(files, params, options, progress=bar.advance)
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
