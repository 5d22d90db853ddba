"""sft: supervised fine-tuning of a base checkpoint on chat-formatted reasoning examples.

Reads a `checkpoint` (the base model) and, optionally, a `samples` or `corpus` artifact
and a `problems` set (in place of the families); writes a `checkpoint`. Examples come
from the worked split of the task families or the problem set (the worked
solution as `<think>…</think><answer>…</answer>`), the optional artifact, and JSONL files
named in the config. The loss is on assistant tokens only; examples are packed with
document masks so packed examples never attend to each other. Resumes exactly (shared
Trainer). The summary reports greedy accuracy on held-out eval problems, before and after.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsctl.configs import stage_defaults
from dsctl.errors import UserError
from dsctl.pipeline.stage import PROBLEMS_INPUT, Input, StageContext, StageSpec
from dsctl.tasks.config import CompletionConfig, EvalSplitConfig, TaskConfig, TrainSplitConfig
from dsctl.train.config import ExamplesConfig, LMTrainConfig


@dataclass
@stage_defaults(
    max_steps=200,
    lr=1e-3,  # below pretraining's: the base model is already trained
    warmup_steps=10,
    eval_batches=4,
)
class SFTConfig(TaskConfig, TrainSplitConfig, EvalSplitConfig, CompletionConfig, ExamplesConfig, LMTrainConfig):
    jsonl: list[str] = field(default_factory=list)
    """Extra JSONL/Parquet files (globs) of {prompt, response} or {messages} rows; rows
    longer than seq_len are dropped (and counted), not cut."""
    eval_base: bool = True
    """Also score the input checkpoint on the same held-out problems, to report the gain."""


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from dsctl.tokenizer import load_tokenizer
    from dsctl.train.artifacts import export_checkpoint, load_model, tokenizer_dir
    from dsctl.train.batches import PackedExamples
    from dsctl.train.checkpoint import latest_checkpoint
    from dsctl.train.examples import split_validation
    from dsctl.train.loop import LMTrainer, resolve_device

    cfg: SFTConfig = ctx.config
    base = ctx.input("checkpoint")
    tok_dir = tokenizer_dir(base)
    tokenizer = load_tokenizer(tok_dir)
    examples, counts = build_examples(ctx, tokenizer)
    train, val = split_validation(examples, cfg.val_fraction, ctx.seed)
    ctx.info(f"{len(train)} training / {len(val)} validation examples "
             f"({counts['too_long']} longer than seq_len={cfg.seq_len} dropped)")
    torch.manual_seed(ctx.seed)
    model = load_model(base).to(resolve_device(cfg.device))
    summary: dict[str, Any] = {}
    if cfg.eval_problems and cfg.eval_base:
        summary.update(_remember_base_eval(ctx, model, tokenizer))

    batches = PackedExamples(train, cfg.seq_len, cfg.batch_size, tokenizer.pad_id, ctx.seed, grad_accum=cfg.grad_accum)
    val_batches = PackedExamples(val, cfg.seq_len, cfg.batch_size, tokenizer.pad_id, ctx.seed, shuffle=False)
    trainer = LMTrainer(model, batches, cfg, ctx, val_batches=val_batches)
    fit = trainer.fit()
    if cfg.eval_problems:
        result = _eval(ctx, trainer.model, tokenizer)
        summary = {**result.summary("eval_"), **summary}
        if "base_eval_accuracy" in summary:
            summary["eval_accuracy_gain"] = round(summary["eval_accuracy"] - summary["base_eval_accuracy"], 4)
    summary.update(fit)
    summary.update(train_examples=len(train), val_examples=len(val), **counts)
    export_checkpoint(trainer.model.cpu(), ctx.out, tok_dir, latest_checkpoint(trainer.ckpt_dir))
    return summary


def build_examples(ctx: StageContext, tokenizer) -> tuple[list, dict[str, int]]:
    """Every source of conversations -> tokenized (ids, learn_mask) examples + counts."""
    from dsctl.data.corpus import expand_paths
    from dsctl.tasks.config import train_draw
    from dsctl.tasks.problem_set import ProblemSet
    from dsctl.train.examples import (
        RowStats,
        artifact_conversations,
        encode_conversations,
        read_conversations,
        task_conversations,
    )

    cfg: SFTConfig = ctx.config
    problem_set = ProblemSet.of(ctx.maybe_input("problems"))
    convs = task_conversations(train_draw(cfg, ctx.seed, problem_set)) if cfg.train_problems else []
    counts: dict[str, int] = {"task_examples": len(convs)}
    stats = RowStats()
    extra = ctx.maybe_input("data")
    if extra is not None:
        if extra.kind not in ("samples", "corpus", "any"):  # "any": a directory given by path
            raise UserError(f"sft's 'data' input must be a samples or corpus artifact; {extra.label} is a {extra.kind}")
        from_artifact = artifact_conversations(extra.path, stats)
        counts["artifact_examples"] = len(from_artifact)
        convs += from_artifact
    if cfg.jsonl:
        before = stats.rows
        for path in expand_paths(cfg.jsonl):
            convs += read_conversations(path, stats)
        counts["jsonl_examples"] = stats.rows - before
    if stats.malformed:
        ctx.warn(f"{stats.malformed} malformed rows skipped, e.g. {stats.examples[0]}")
    counts.update(malformed_rows=stats.malformed, rejected_sample_rows=stats.rejected_samples)
    examples, counts["too_long"] = encode_conversations(tokenizer, convs, cfg.seq_len)
    if not examples:
        raise UserError("sft has no usable examples: set train_problems > 0, give a samples/corpus input, "
                        "or name JSONL files in `jsonl` (rows must fit in seq_len)")
    return examples, counts


def _eval(ctx: StageContext, model, tokenizer):
    from dsctl.eval.task_accuracy import greedy_accuracy
    from dsctl.tasks.config import eval_draw
    from dsctl.tasks.problem_set import ProblemSet

    cfg: SFTConfig = ctx.config
    problems = eval_draw(cfg, ProblemSet.of(ctx.maybe_input("problems")))
    return greedy_accuracy(model, tokenizer, problems, max_new_tokens=cfg.max_new_tokens)


def _remember_base_eval(ctx: StageContext, model, tokenizer) -> dict[str, Any]:
    """Score the base model once; a resumed attempt reads the score back instead."""
    state = ctx.load_state()
    if "base_eval" not in state:
        result = _eval(ctx, model, tokenizer)
        state["base_eval"] = {"base_eval_accuracy": round(result.accuracy, 4),
                              "base_eval_format_rate": round(result.format_rate, 4)}
        ctx.save_state(state)
    return state["base_eval"]


def fingerprint(cfg: SFTConfig) -> dict[str, Any]:
    """The contents of the JSONL files the config names, so edited files re-run sft."""
    from dsctl.data.corpus import expand_paths

    if not cfg.jsonl:
        return {}
    return {"files": {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in expand_paths(cfg.jsonl)}}


STAGE = StageSpec(
    name="sft",
    version=1,
    config=SFTConfig,
    run=run,
    output="checkpoint",
    inputs={
        "checkpoint": Input("checkpoint", help="the base model to fine-tune"),
        "data": Input("any", optional=True, help="extra examples: a samples or corpus artifact"),
        "problems": PROBLEMS_INPUT,
    },
    help="Supervised fine-tuning on chat-formatted reasoning examples (loss on assistant tokens "
         "only, packed with document masks); reports greedy eval accuracy before and after.",
    fingerprint=fingerprint,
    example="dsctl sft --from mini_r1:pretrain --set max_steps=100",
)
