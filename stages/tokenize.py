"""tokenize: train (or reuse) the BPE tokenizer and encode the corpus into token shards.

Reads a corpus (and optionally a tokenizer or shards artifact whose tokenizer to reuse),
writes a shards artifact:

    tokenizer/                 tokenizer.model, special_tokens.json, HF files (dsctl/tokenizer.py)
    train-00000.arrow ...      Arrow IPC streams: id: string, input_ids: list<int32>, one
    validation-00000.arrow     row per document (no bos/eos; the trainer adds eos when packing)
    index.json                 vocab_size, per-split files with documents, tokens, sha256

The held-out validation documents are chosen by a hash of the document id, so the same
document is always on the same side. The tokenizer is trained only on the train side,
in corpus order (deterministic). Encoding runs on `workers` processes; the output is
identical for any worker count. A killed run resumes from its last checkpoint (the
tokenizer, and every `checkpoint_every_docs` documents of shards, are kept).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dsctl.configs import stage_defaults
from dsctl.data.config import DataWorkConfig
from dsctl.data.corpus import ReadStats, corpus_files, iter_rows
from dsctl.data.shards import EncodeStats, TokenShardWriter, encode_to_shards, is_validation, write_index
from dsctl.errors import UserError
from dsctl.stage import Input, StageContext, StageSpec
from dsctl.store import Artifact
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
    """Start a new shard file after this many tokens (documents are never split)."""
    checkpoint_every_docs: int = 1_000_000
    """Finish the open shards and record progress every this many documents, so a killed
    run resumes there (0 = only at the end). Changes shard boundaries, not content."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be at least 300 (256 byte pieces + reserved tokens), got {self.vocab_size}")


def reused_tokenizer_dir(artifact: Artifact) -> Path:
    """The tokenizer inside a tokenizer artifact (its root) or a shards artifact (tokenizer/)."""
    for candidate in (artifact.path, artifact.path / "tokenizer"):
        if (candidate / "tokenizer.model").exists():
            return candidate
    raise UserError(f"{artifact.label or artifact.path}: no tokenizer.model at its root or under tokenizer/")


def run(ctx: StageContext) -> dict:
    cfg: TokenizeConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no JSONL/Parquet files under data/ to tokenize")
    state = ctx.load_state()
    tokenizer = _tokenizer(ctx, files, resumed=state.get("tokenizer_done", False))
    ctx.save_state({**state, "tokenizer_done": True})
    stats, read, seconds = _encode(ctx, files, ctx.load_state())
    total = stats.tokens["train"] + stats.tokens["validation"]
    ctx.info(f"{total:,} tokens ({stats.tokens['validation']:,} held out), {stats.bytes / max(total, 1):.2f} bytes/token")
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


def _encode(ctx: StageContext, files: list[Path], state: dict) -> tuple[EncodeStats, ReadStats, float]:
    """Encode every row into the shards, resuming after the last checkpoint if any.

    A checkpoint (every `checkpoint_every_docs` rows) finishes the open shards and records
    them with the rows done; a resumed attempt deletes shard files written after it and
    continues from that row, so its output is byte-identical to an unbroken run.
    """
    cfg: TokenizeConfig = ctx.config
    done = state.get("encode", {"rows": 0, "stats": None, "files": {"train": [], "validation": []}})
    kept = {f["file"] for entries in done["files"].values() for f in entries}
    for partial in ctx.out.glob("*.arrow"):
        if partial.name not in kept:
            partial.unlink()
    if done["rows"]:
        ctx.info(f"resuming after {done['rows']:,} encoded documents")
    writers = {
        split: TokenShardWriter(ctx.out, split, cfg.tokens_per_shard, finished=done["files"][split])
        for split in ("train", "validation")
    }

    def checkpoint(rows: int, stats: EncodeStats, finished: dict) -> None:
        ctx.save_state({"tokenizer_done": True, "encode": {"rows": rows, "stats": asdict(stats), "files": finished}})

    read = ReadStats()
    rows = iter_rows(files, read)
    for _ in itertools.islice(rows, done["rows"]):  # rows an earlier attempt finished
        pass
    start = time.perf_counter()
    with ctx.progress(None, "encode", unit="doc", completed=done["rows"]) as bar:
        stats = encode_to_shards(
            rows, ctx.out / "tokenizer" / "tokenizer.model", writers, cfg.validation_fraction,
            workers=cfg.workers or os.cpu_count() or 1, batch_size=cfg.docs_per_batch, progress=bar.advance,
            stats=EncodeStats(**done["stats"]) if done["stats"] else None, first_row=done["rows"],
            checkpoint_every=cfg.checkpoint_every_docs, on_checkpoint=checkpoint,
        )
    seconds = time.perf_counter() - start
    write_index(ctx.out, Tokenizer.load(ctx.out / "tokenizer").vocab_size, {s: w.close() for s, w in writers.items()})
    return stats, read, seconds


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
