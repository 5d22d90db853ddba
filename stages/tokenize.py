"""tokenize: train (or reuse) the BPE tokenizer and encode the corpus into token shards.

Reads a corpus (and optionally a tokenizer or shards artifact whose tokenizer to reuse),
writes a shards artifact:

    tokenizer/                    tokenizer.model, special_tokens.json, HF files (dsctl/tokenizer.py)
    train-s00000-00000.arrow ...  Arrow IPC streams: id: string, input_ids: list<int32>, one
    validation-s00000-00000.arrow row per document (no bos/eos; the trainer adds eos when
                                  packing); sNNNNN = the input shard
    index.json                    vocab_size, per-split files with documents, tokens, sha256

The held-out validation documents are chosen by a hash of the document id, so the same
document is always on the same side. The tokenizer is trained only on the train side,
in corpus order (deterministic). Encoding is one task per input shard, on local processes
or Ray (`executor`); the output is identical for any worker count and either executor. A
killed run resumes: the tokenizer and every finished shard are kept.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dsctl.configs import stage_defaults
from dsctl.data.config import DataWorkConfig
from dsctl.data.corpus import ReadStats, corpus_files, iter_rows
from dsctl.data.executor import executor_for
from dsctl.data.jobs import StepBars, run_tasks
from dsctl.data.shards import (
    EncodeJob,
    EncodeStats,
    TokenShardWriter,
    encode_shard,
    is_validation,
    merge_encode_stats,
    write_index,
)
from dsctl.errors import UserError
from dsctl.pipeline.stage import Input, StageContext, StageSpec
from dsctl.pipeline.store import Artifact
from dsctl.tokenizer import Tokenizer


@dataclass
@stage_defaults(docs_per_batch=256)
class TokenizeConfig(DataWorkConfig):
    vocab_size: int = 4096
    """Tokenizer vocabulary (incl. 256 byte pieces and 10 reserved tokens); sized for the CPU recipe."""
    validation_fraction: float = 0.01
    """Share of documents held out as the validation split (by a hash of the id)."""
    character_coverage: float = 0.9995
    """Share of characters the vocabulary must cover; rarer ones are spelled in bytes."""
    max_training_sentences: int = 2_000_000
    """At most this many lines (the first ones, in corpus order) train the tokenizer."""
    train_threads: int = 1
    """Threads for tokenizer training; 1 keeps the trained model bit-identical run to run."""
    tokens_per_shard: int = 50_000_000
    """Start a new shard file after this many tokens of one input shard (documents are never split)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.vocab_size < 300:
            raise ValueError("vocab_size must be at least 300 (256 byte pieces + reserved tokens), "
                             f"got {self.vocab_size}")


def reused_tokenizer_dir(artifact: Artifact) -> Path:
    """The tokenizer inside a tokenizer artifact (its root) or a shards artifact (tokenizer/)."""
    for candidate in (artifact.path, artifact.path / "tokenizer"):
        if (candidate / "tokenizer.model").exists():
            return candidate
    raise UserError(f"{artifact.label or artifact.path}: no tokenizer.model at its root or under tokenizer/")


def run(ctx: StageContext) -> dict:
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no row files under data/ to tokenize")
    state = ctx.load_state()
    tokenizer = _tokenizer(ctx, files, resumed=state.get("tokenizer_done", False))
    ctx.save_state({**state, "tokenizer_done": True})
    stats, read, seconds = _encode(ctx, files)
    total = stats.tokens["train"] + stats.tokens["validation"]
    ctx.info(f"{total:,} tokens ({stats.tokens['validation']:,} held out), "
             f"{stats.bytes / max(total, 1):.2f} bytes/token")
    return {
        "train_tokens": stats.tokens["train"],
        "validation_tokens": stats.tokens["validation"],
        "train_documents": stats.documents["train"],
        "validation_documents": stats.documents["validation"],
        "vocab_size": tokenizer.vocab_size,
        "bytes_per_token": round(stats.bytes / max(total, 1), 4),
        "tokenizer_reused": ctx.maybe_input("tokenizer") is not None,
        "encode_mb_per_s": round(stats.bytes / 1e6 / max(seconds, 1e-9), 3),
        "skipped_empty": stats.skipped_empty,
        **read.as_dict(),
    }


def _tokenizer(ctx: StageContext, files: list[Path], resumed: bool) -> Tokenizer:
    """The reused tokenizer, the one an interrupted attempt already trained, or a new one."""
    cfg: TokenizeConfig = ctx.config
    tok_dir = ctx.out / "tokenizer"
    reuse = ctx.maybe_input("tokenizer")
    if resumed:
        return Tokenizer.load(tok_dir)
    if reuse is not None:
        shutil.copytree(reused_tokenizer_dir(reuse), tok_dir, dirs_exist_ok=True)
        tokenizer = Tokenizer.load(tok_dir)
        ctx.info(f"reusing the tokenizer of {reuse.label or reuse.path} (vocab {tokenizer.vocab_size})")
        return tokenizer
    ctx.info(f"training a {cfg.vocab_size}-piece BPE tokenizer")
    train_texts = (
        row["text"] for row in iter_rows(files, ReadStats())
        if not is_validation(str(row.get("id", "")), cfg.validation_fraction)
    )
    return Tokenizer.train(
        train_texts, cfg.vocab_size, tok_dir, seed=ctx.seed, max_sentences=cfg.max_training_sentences,
        character_coverage=cfg.character_coverage, num_threads=cfg.train_threads,
    )


def _encode(ctx: StageContext, files: list[Path]) -> tuple[EncodeStats, ReadStats, float]:
    """Encode every input shard into its own token shard files (one task each); the index
    lists them in input order, so the artifact does not depend on where tasks ran."""
    cfg: TokenizeConfig = ctx.config
    tasks = [EncodeJob(index=i, path=path, out=ctx.out, model_path=ctx.out / "tokenizer" / "tokenizer.model",
                       validation_fraction=cfg.validation_fraction, tokens_per_shard=cfg.tokens_per_shard,
                       batch_size=cfg.docs_per_batch)
             for i, path in enumerate(files)]
    start = time.perf_counter()
    with executor_for(cfg) as executor, \
            StepBars(ctx) as progress:
        results = run_tasks(executor, ctx.scratch / "tokenize", "encode", encode_shard, tasks, progress)
    seconds = time.perf_counter() - start
    splits = {}
    for split in ("train", "validation"):
        splits[split] = [entry for result in results for entry in result["files"][split]]
        if not splits[split]:  # an empty split still gets one (empty) file
            splits[split] = TokenShardWriter(ctx.out, split).close()
    write_index(ctx.out, Tokenizer.load(ctx.out / "tokenizer").vocab_size, splits)
    read = ReadStats()
    for result in results:
        read.merge(ReadStats(**result["read"]))
    return merge_encode_stats(EncodeStats(**r["stats"]) for r in results), read, seconds


STAGE = StageSpec(
    name="tokenize",
    version=1,
    config=TokenizeConfig,
    run=run,
    output="shards",
    inputs={
        "corpus": Input("corpus", help="the corpus to encode"),
        "tokenizer": Input("any", optional=True, help="a tokenizer or shards artifact whose tokenizer to reuse"),
    },
    help="Train a sentencepiece BPE tokenizer (byte fallback, reserved chat/reasoning tokens) "
    "and encode the corpus into Arrow token shards with a held-out validation split.",
    example="dsctl tokenize --from mini_r1:decontaminate --set vocab_size=4096",
)
