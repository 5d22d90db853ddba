"""source: where raw text comes from — the built-in default world, your files, a dataset.

Writes a corpus:

    data/part-*.jsonl   rows {id, text, ...}: the default world's rows first, then rows
                        from `paths` (JSONL/Parquet, in sorted file order), then rows of
                        `dataset`; extra fields are carried through
    planted.jsonl       the default world's answer key (which rows are planted dirt), for
                        measuring clean and dedup; never read by them

The default world (dsctl/data/world.py) is made offline from the seed:
reasoning documents from dsctl/tasks (worked split only), English prose from the
installed Python's docstrings, and planted exact/near duplicates, boilerplate, junk,
stubs and non-English passages. Set `world = "none"` to read only your own data.

Unreadable input is counted, never fatal: malformed JSON lines, non-UTF-8 lines, rows
without a text field and empty files show up as `read_*` counts in the summary. A path
pattern that matches nothing is an error.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from dsctl.configs import stage_defaults
from dsctl.data.config import RowInputConfig, ShardOutputConfig
from dsctl.data.corpus import ReadStats, ShardWriter, expand_paths, iter_rows, jsonable, load_dataset
from dsctl.data.world import WorldSizes, build_world
from dsctl.errors import UserError
from dsctl.files import write_text_atomic
from dsctl.pipeline.stage import StageContext, StageSpec
from dsctl.pipeline.store import sha256_file
from dsctl.tasks.config import TaskConfig, check_split_sizes

_DEFAULT_SIZES = WorldSizes()


@dataclass
@stage_defaults(families=list(_DEFAULT_SIZES.task_families))
class SourceConfig(TaskConfig, ShardOutputConfig, RowInputConfig):
    world: Literal["default", "none"] = "default"
    """"default": include the built-in offline world; "none": only `paths`/`dataset`."""
    dataset_split: str = "train"
    """Which split of `dataset` to read."""
    text_field: str = "text"
    """Field of your rows holding the document text (written out as `text`)."""
    id_field: str = "id"
    """Field of your rows holding a document id; rows without one get `<file>:<row>`."""
    task_problems_per_family: int = _DEFAULT_SIZES.task_problems_per_family
    """Default world: problems per task family from the worked split, gathered into
    worksheet documents."""
    task_doc_min_words: int = _DEFAULT_SIZES.task_doc_min_words
    """Default world: a worksheet takes problems until it has at least this many words (one
    compact arithmetic problem alone is a stub clean drops; a worded one stands alone)."""
    max_prose_docs: int = _DEFAULT_SIZES.max_prose_docs
    """Default world: at most this many docstring prose documents (about 2,000 exist)."""
    passkey_docs: int = _DEFAULT_SIZES.passkey_docs
    """Default world: passkey-retrieval documents (a key hidden in prose, asked for at the end)."""
    passkey_max_words: int = _DEFAULT_SIZES.passkey_max_words
    """Default world: longest passkey haystack in words (keep the document inside the pretraining context)."""
    ledger_docs: int = _DEFAULT_SIZES.ledger_docs
    """Default world: ledger documents (facts about people, then questions answered by copying them)."""
    exact_dups: int = _DEFAULT_SIZES.exact_dups
    """Default world: planted exact copies of clean documents."""
    near_dups: int = _DEFAULT_SIZES.near_dups
    """Default world: planted near copies (word-5-gram Jaccard 0.7-0.95 to the original)."""
    boilerplate: int = _DEFAULT_SIZES.boilerplate
    """Default world: planted cookie-banner/menu/footer pages."""
    junk: int = _DEFAULT_SIZES.junk
    """Default world: planted symbol and keyboard-mash junk."""
    short: int = _DEFAULT_SIZES.short
    """Default world: planted stubs of a few words."""
    non_english: int = _DEFAULT_SIZES.non_english
    """Default world: planted French/German/Spanish/Italian/Portuguese/Dutch passages."""

    def __post_init__(self) -> None:
        super().__post_init__()  # families and difficulty
        counts = ("task_problems_per_family", "task_doc_min_words", "max_prose_docs", "passkey_docs",
                  "passkey_max_words", "ledger_docs", "exact_dups", "near_dups", "boilerplate", "junk", "short",
                  "non_english")
        negative = [name for name in counts if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0 (0 leaves that ingredient out)")
        if self.world == "none" and not self.paths and not self.dataset:
            raise ValueError("nothing to read: set `paths` or `dataset`, or use world = \"default\"")
        if self.world == "default":
            check_split_sizes("task_problems_per_family", self.families, "worked",
                              [self.task_problems_per_family] * len(self.families), self.difficulty)

    def sizes(self) -> WorldSizes:
        return WorldSizes(
            task_problems_per_family=self.task_problems_per_family, task_doc_min_words=self.task_doc_min_words,
            task_families=tuple(self.families),
            max_prose_docs=self.max_prose_docs, passkey_docs=self.passkey_docs,
            passkey_max_words=self.passkey_max_words, ledger_docs=self.ledger_docs,
            exact_dups=self.exact_dups, near_dups=self.near_dups,
            boilerplate=self.boilerplate, junk=self.junk, short=self.short, non_english=self.non_english,
        )


def run(ctx: StageContext) -> dict:
    cfg: SourceConfig = ctx.config
    metrics: dict[str, Any] = {"documents": 0}
    stats = ReadStats()
    with ShardWriter(ctx.out / "data", cfg.rows_per_shard) as out:
        if cfg.world == "default":
            started = time.perf_counter()
            world = build_world(ctx.seed, cfg.sizes(), cfg.difficulty)
            for row in world.rows:
                out.write(row)
            write_text_atomic(ctx.out / "planted.jsonl", "".join(
                json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in world.planted))
            metrics["world_seconds"] = round(time.perf_counter() - started, 2)
            metrics.update({f"world_{k}": v for k, v in world.stats.items()})
        if cfg.paths:
            files = expand_paths(cfg.paths)
            with ctx.progress(len(files), "read files", unit="file") as bar:
                for path in files:
                    _copy_rows(_file_rows(path, stats, cfg), out)
                    bar.advance()
        if cfg.dataset:
            with ctx.progress(None, f"read {cfg.dataset}", unit="doc") as bar:
                for row in _dataset_rows(cfg, stats, ctx.scratch / "hf_cache"):
                    out.write(row)
                    bar.advance()
        metrics["documents"] = out.rows
    metrics.update(stats.as_dict())
    ctx.info(f"wrote {metrics['documents']:,} documents")
    return metrics


def _copy_rows(rows: Iterator[dict], out: ShardWriter) -> None:
    for row in rows:
        out.write(row)


def _normalize_row(row: dict[str, Any], cfg: SourceConfig, fallback_id: str) -> dict[str, Any]:
    """Text under `text`, a string `id`, and only JSON-ready values (Parquet may hold
    timestamps or bytes)."""
    row = {k: jsonable(v) for k, v in row.items()}
    row["text"] = row.pop(cfg.text_field)
    given = row.pop(cfg.id_field, None)
    row = {"id": str(given) if given not in (None, "") else fallback_id, **row}
    return row


def _file_rows(path: Path, stats: ReadStats, cfg: SourceConfig) -> Iterator[dict]:
    for i, row in enumerate(iter_rows([path], stats, cfg.text_field)):
        yield _normalize_row(row, cfg, f"{path.name}:{i}")


def _dataset_rows(cfg: SourceConfig, stats: ReadStats, cache_dir: Path) -> Iterator[dict]:
    dataset = load_dataset(cfg.dataset, cfg.dataset_config, cfg.dataset_split, cache_dir)
    if cfg.text_field not in dataset.column_names:
        raise UserError(
            f"dataset '{cfg.dataset}' has no column '{cfg.text_field}' (columns: {', '.join(dataset.column_names)}); "
            "set text_field"
        )
    name = Path(cfg.dataset).name or cfg.dataset
    for i, row in enumerate(dataset):
        if not isinstance(row.get(cfg.text_field), str):
            stats.missing_text += 1
            continue
        stats.rows += 1
        yield _normalize_row(row, cfg, f"{name}:{i}")


def fingerprint(cfg: SourceConfig) -> dict:
    """What the config only names: the contents of the user's files, and the Python
    version whose docstrings make the default world's prose."""
    extra: dict[str, Any] = {}
    if cfg.world == "default":
        extra["python"] = platform.python_version()
    if cfg.paths:
        extra["files"] = {str(p): sha256_file(p) for p in expand_paths(cfg.paths)}
    local = Path(cfg.dataset) if cfg.dataset else None
    if local is not None and local.exists():
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        extra["dataset_files"] = {str(p.relative_to(local) if local.is_dir() else p.name): sha256_file(p)
                                  for p in files}
    return extra


STAGE = StageSpec(
    name="source",
    version=3,  # 2: passkey and ledger retrieval documents; 3: compact arithmetic worksheets
    config=SourceConfig,
    run=run,
    output="corpus",
    inputs={},
    help="Gather raw text: the built-in offline default world (reasoning tasks, Python "
    "docstring prose and planted dirt), your JSONL/Parquet files, or a `datasets` dataset.",
    fingerprint=fingerprint,
    example="dsctl source --set world=none --set 'paths=[\"data/*.jsonl\"]'",
)
