"""dedup: drop exact and near-duplicate documents (MinHash LSH + true Jaccard check).

Reads a corpus, writes a corpus:

    data/part-NNNNN.jsonl       one survivor per duplicate cluster (the first in input order)
    rejected/part-NNNNN.jsonl   the others, with reason "exact_duplicate" | "near_duplicate"
                                and `duplicate_of` = the survivor's id
    planted.jsonl               copied through if the input has one (for measurement)

NNNNN is the input file's number: each input shard gives at most one file of each kind.
Exact duplicates are rows whose casefolded, whitespace-collapsed text is identical. Near
duplicates are documents whose word-5-gram shingle sets have Jaccard >= `threshold`;
MinHash + LSH banding finds the candidates, and (by default) each candidate pair is then
checked by its true Jaccard. The job is sharded and resumable (see dsctl/data/dedup.py):
memory grows with a shard or an LSH bucket, not with the corpus; it runs on local
processes or on Ray (`executor`), with the same bytes either way; a killed run resumes
from its finished tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsctl.data.audit import carry_planted
from dsctl.data.config import DataWorkConfig
from dsctl.data.corpus import corpus_files
from dsctl.data.dedup import DedupParams, deduplicate
from dsctl.data.executor import executor_for
from dsctl.data.jobs import StepBars
from dsctl.errors import UserError
from dsctl.pipeline.stage import Input, StageContext, StageSpec


@dataclass
class DedupConfig(DedupParams, DataWorkConfig):
    """The algorithm's parameters (dsctl.data.dedup.DedupParams) and how to run it."""


def run(ctx: StageContext) -> dict:
    cfg: DedupConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no row files under data/ to deduplicate")
    with executor_for(cfg) as executor, \
            StepBars(ctx) as progress:
        summary = deduplicate(files, ctx.scratch / "dedup", ctx.out, cfg, executor, seed=ctx.seed,
                              batch_size=cfg.docs_per_batch, progress=progress)
    carry_planted(source.path, ctx.out)
    metrics = summary.metrics()
    ctx.info(
        f"kept {metrics['kept']:,} of {metrics['documents']:,} "
        f"({metrics['removed_exact_duplicate']:,} exact, {metrics['removed_near_duplicate']:,} near duplicates)"
    )
    return metrics


STAGE = StageSpec(
    name="dedup",
    version=2,
    config=DedupConfig,
    run=run,
    output="corpus",
    inputs={"corpus": Input("corpus", help="the corpus to deduplicate")},
    help="Remove exact and near-duplicate documents with MinHash LSH and a true-Jaccard check, as a sharded, "
    "resumable job on local processes or Ray. Survivors are the first copy in input order; removed rows go "
    "to rejected/ with duplicate_of.",
    example="dsctl dedup --from mini_r1:clean --set threshold=0.85",
)
