"""clean: normalize text and drop documents that fail quality heuristics or language ID.

Reads a corpus, writes a corpus:

    data/part-NNNNN.jsonl       rows that passed, with normalized text (NFC, no control
                                characters, repaired whitespace); other fields carried through
    rejected/part-NNNNN.jsonl   every rejected row with `reason` = the first rule that fired
    planted.jsonl               copied through if the input has one (for measurement)

One task per input shard NNNNN (streamed, so memory does not grow with the corpus), run on
local processes or Ray (`executor`) with the same bytes either way; a killed run resumes
from its finished shards.

The rules (dsctl/data/text_rules.py) are Gopher/C4/FineWeb heuristics, each a small
named function whose threshold is the `CleanRules` field of the same idea (the config
piece, with the `Cleaner` and the per-shard job, in dsctl/data/clean.py); the summary
counts rejects per rule. Then fastText lid.176 language ID (FineWeb's 0.65 threshold)
and, if example files are given, a fastText quality classifier trained right here.
Reasoning-task documents pass with the defaults: the word-shape rules judge the words
around the math, not the numbers (see text_rules).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from dsctl.data.audit import carry_planted
from dsctl.data.clean import RULE_NAMES, CleanJob, CleanRules, clean_shard
from dsctl.data.config import DataWorkConfig
from dsctl.data.corpus import ReadStats, corpus_files, expand_paths, remove_partial_parts
from dsctl.data.executor import executor_for
from dsctl.data.jobs import StepBars, run_tasks
from dsctl.data.quality import read_examples, train_quality_model
from dsctl.errors import UserError
from dsctl.pipeline.stage import Input, StageContext, StageSpec
from dsctl.pipeline.store import sha256_file


@dataclass
class CleanConfig(CleanRules, DataWorkConfig):
    quality_good: list[str] = field(default_factory=list)
    """Files (JSONL/Parquet rows or .txt lines) of good text to train a fastText quality
    classifier on; with `quality_bad`. Empty = no classifier (rule `quality`)."""
    quality_bad: list[str] = field(default_factory=list)
    """Files of bad text for the quality classifier."""
    quality_epochs: int = 10
    """Training epochs of the quality classifier."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.quality_good) != bool(self.quality_bad):
            raise ValueError("set both quality_good and quality_bad, or neither")


def run(ctx: StageContext) -> dict:
    cfg: CleanConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no row files under data/ to clean")
    quality_model = None
    example_stats = ReadStats()
    if cfg.quality_good:
        good = read_examples(cfg.quality_good, example_stats)
        bad = read_examples(cfg.quality_bad, example_stats)
        ctx.info(f"training quality classifier on {len(good):,} good / {len(bad):,} bad examples")
        model = train_quality_model(good, bad, ctx.scratch / "quality", ctx.seed, cfg.quality_epochs)
        quality_model = model.save(ctx.scratch / "quality" / "model.bin")
    started = time.perf_counter()
    tasks = [CleanJob(index=i, path=path, out=ctx.out, rules=cfg, quality_model=quality_model)
             for i, path in enumerate(files)]
    with executor_for(cfg) as executor, \
            StepBars(ctx) as progress:
        results = run_tasks(executor, ctx.scratch / "clean", "clean", clean_shard, tasks, progress)
    remove_partial_parts(ctx.out)
    seconds = time.perf_counter() - started
    carry_planted(source.path, ctx.out)
    counts, languages, stats = Counter(), Counter(), ReadStats()
    for result in results:
        counts.update(result["counts"])
        languages.update(result["languages"])
        stats.merge(ReadStats(**result["read"]))
    total = sum(counts.values())
    metrics = {
        "kept": counts["kept"],
        "documents": total,
        "rejected": total - counts["kept"],
        **{f"rejected_{name}": counts[name] for name in ("empty", *RULE_NAMES) if counts[name]},
        **stats.as_dict(),
        "languages": ", ".join(f"{lang}={n}" for lang, n in languages.most_common(8)),
        "docs_per_s": round(total / seconds, 1) if seconds > 0 else 0.0,
    }
    if cfg.quality_good:
        metrics.update(example_stats.as_dict("quality_examples_read_"))
    ctx.info(f"kept {counts['kept']:,} of {total:,} documents ({metrics['docs_per_s']:,} docs/s)")
    return metrics


def fingerprint(cfg: CleanConfig) -> dict:
    """The quality-example files' contents and the language model file are outside
    state the config only names: hash them so edits change the cache key."""
    files = expand_paths([*cfg.quality_good, *cfg.quality_bad]) if cfg.quality_good else []
    extra = {str(p): sha256_file(p) for p in files}
    if cfg.uses_langid:
        from dsctl.data.langid import default_model_path

        model = cfg.langid_model or str(default_model_path())
        extra["langid_model"] = sha256_file(model)
    return extra


STAGE = StageSpec(
    name="clean",
    version=2,  # 2: expressions like 16-8-0=8 count as math words
    config=CleanConfig,
    run=run,
    output="corpus",
    inputs={"corpus": Input("corpus", help="the corpus to clean")},
    help="Normalize text and drop documents that fail Gopher/C4/FineWeb quality heuristics, "
    "fastText language ID or an optional fastText quality classifier. Rejected rows go to "
    "rejected/ with the rule that fired.",
    fingerprint=fingerprint,
    example="dsctl clean --from mini_r1:source --set min_words=30 --set languages='[\"en\",\"de\"]'",
)
