"""extend: stretch a checkpoint's context with YaRN, then fine-tune briefly on long sequences.

Reads a `checkpoint` (the base model) and `shards` (long text), writes a `checkpoint`
whose config.json carries DeepSeek-V3's YaRN `rope_scaling` (factor s over the base's
trained context). Training mixes packed long-text windows of s × the original context
with synthetic passkey-retrieval documents, at a small learning rate, through the shared
Trainer (exact resume). Passkey accuracy at 1×, 2×, 4× the original context is measured
for the base, the base with YaRN and no training, and the extended model, with the
validation loss over each whole window and, past 1×, over its positions beyond the
original context alone (the positions the base never trained on); the numbers go to the
stage summary and `passkey.json` in the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dsctl.configs import stage_defaults
from dsctl.files import write_text_atomic
from dsctl.pipeline.stage import Input, StageContext, StageSpec
from dsctl.tasks.config import PasskeyConfig
from dsctl.train.config import LMTrainConfig


@dataclass
@stage_defaults(
    max_steps=40,  # a short fine-tune: YaRN needs little
    batch_size=4,
    seq_len=0,
    lr=5e-4,  # small: adapt to the new positions without forgetting
    warmup_steps=5,
    checkpoint_every=20,
    eval_every=0,
    eval_batches=2,
    doc_masking=False,  # a packed window is one long context with continuous positions: the point
    passkey_trials=12,
)
class ExtendConfig(PasskeyConfig, LMTrainConfig):
    factor: float = 4.0
    """YaRN scale s: the new context is s × the base checkpoint's trained context."""
    original_context: int = 0
    """The base's trained context; 0 = read it from the checkpoint (its training stage's
    seq_len, else config.json's max_position_embeddings). Set it for outside checkpoints."""
    beta_fast: float = 4.0
    """YaRN β_fast: rotary pairs turning more than this often over the original context keep
    their frequency. DeepSeek-V3's 32 suits its 4K context; at 256 it would stretch the ~20- and
    ~63-token wavelengths that short-range reading uses, so 4 leaves every wavelength under a
    quarter of the original context unscaled."""
    beta_slow: float = 1.0
    """YaRN β_slow: pairs turning fewer times than this over the original context (wavelength
    above it) are interpolated (frequency / s); DeepSeek-V3's 1."""
    mscale: float = 1.0
    """YaRN mscale and mscale_all_dim (DeepSeek-V3: both 1.0, so logits sharpen by (0.1·ln s + 1)²)."""
    passkey_fraction: float = 0.5
    """Share of training steps made of passkey documents (the rest: packed long text)."""
    passkey_multiples: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    """Context lengths, as multiples of the original context, at which passkey accuracy is reported."""
    passkey_batch_size: int = 4
    """Passkey documents decoded together."""
    length_eval_batches: int = 2
    """Batches (of batch_size windows) of validation text scored at each passkey length
    without document masking: loss vs context length, over the whole window and over the
    positions past the original context (0 skips it)."""


def run(ctx: StageContext) -> dict[str, Any]:
    import dataclasses

    from dsctl.eval.context_length import LengthEval, short_context_loss
    from dsctl.model.yarn import with_yarn
    from dsctl.tokenizer import load_tokenizer
    from dsctl.train.artifacts import export_checkpoint, load_model, tokenizer_dir, trained_context
    from dsctl.train.batches import PackedTokens, load_token_split
    from dsctl.train.checkpoint import latest_checkpoint
    from dsctl.train.long_context import LongContextBatches
    from dsctl.train.loop import LMTrainer, use_compute

    cfg: ExtendConfig = ctx.config
    use_compute(cfg)  # threads for the measurements before training; the Trainer places the model
    checkpoint, shards = ctx.input("checkpoint"), ctx.input("shards")
    tokenizer = load_tokenizer(tokenizer_dir(checkpoint))
    base = load_model(checkpoint)
    original = cfg.original_context or trained_context(checkpoint.manifest, base.config)
    seq_len = cfg.seq_len or int(round(original * cfg.factor))
    ctx.info(f"YaRN s={cfg.factor:g}: context {original} -> {int(round(original * cfg.factor))}; training at {seq_len}")
    yarn = dict(beta_fast=cfg.beta_fast, beta_slow=cfg.beta_slow, mscale=cfg.mscale)
    spec = LengthEval(original, tuple(int(round(m * original)) for m in cfg.passkey_multiples), cfg.passkey_trials,
                      cfg.passkey_batch_size, cfg.batch_size, cfg.length_eval_batches, ctx.seed)

    before = ctx.load_state().get("passkey_before")
    if before is None:  # measured once; a resumed attempt reuses it
        before = {"base": measure(ctx, base, tokenizer, shards.path, spec, "base"),
                  "yarn": measure(ctx, with_yarn(base, cfg.factor, original, **yarn), tokenizer, shards.path, spec,
                                  "yarn")}
        ctx.save_state({"passkey_before": before,
                        "short_loss_base": short_context_loss(base, tokenizer, shards.path, spec)})

    train_cfg = dataclasses.replace(cfg, seq_len=seq_len)
    corpus = PackedTokens(load_token_split(shards.path, "train"), seq_len, cfg.batch_size, tokenizer.eos_id,
                          ctx.seed, grad_accum=cfg.grad_accum)
    batches = LongContextBatches(corpus, tokenizer, seq_len, cfg.batch_size, ctx.seed, cfg.passkey_fraction,
                                 grad_accum=cfg.grad_accum)
    val_docs = load_token_split(shards.path, "validation")
    val = (PackedTokens(val_docs, seq_len, cfg.batch_size, tokenizer.eos_id, ctx.seed, shuffle=False)
           if val_docs else None)
    trainer = LMTrainer(with_yarn(base, cfg.factor, original, **yarn), batches, train_cfg, ctx, val_batches=val)
    summary = trainer.fit()
    after = measure(ctx, trainer.model, tokenizer, shards.path, spec, "extended")
    short_loss = {"base": ctx.load_state().get("short_loss_base"),
                  "extended": short_context_loss(trainer.model, tokenizer, shards.path, spec)}

    table = {**before, "extended": after}
    export_checkpoint(trainer.model, ctx.out, tokenizer_dir(checkpoint), latest_checkpoint(trainer.ckpt_dir))
    return {**report(ctx, table, short_loss, spec), **summary, "original_context": original,
            "context": int(round(original * cfg.factor)), "train_seq_len": seq_len}


def report(ctx: StageContext, table: dict[str, Any], short_loss: dict[str, Any], spec: Any) -> dict[str, Any]:
    """Log the passkey/length table, write passkey.json, and return its headline numbers."""
    from dsctl.eval.context_length import headline

    cfg: ExtendConfig = ctx.config
    for name, row in table.items():  # logged now: the Trainer starts metrics.jsonl afresh
        for n, result in row.items():
            ctx.log(event="passkey", model=name, length=int(n), accuracy=result["accuracy"],
                    val_loss=result.get("val_loss"), val_loss_past_original=result.get("val_loss_past_original"))
    passkey = {"original_context": spec.original, "factor": cfg.factor, "trials": cfg.passkey_trials,
               "accuracy": table, "doc_masked_val_loss_at_original_context": short_loss}
    write_text_atomic(ctx.out / "passkey.json", json.dumps(passkey, indent=2) + "\n")
    return headline(table, short_loss, spec, cfg.passkey_multiples)


def measure(ctx: StageContext, model: Any, tokenizer: Any, shards_dir: Any, spec: Any, name: str) -> dict[str, Any]:
    """One model's row of the length table, with a progress bar and a log line."""
    from dsctl.eval.context_length import describe, length_row

    with ctx.progress(len(spec.lengths), f"passkey {name}", unit="length") as bar:
        row = length_row(model, tokenizer, shards_dir, spec, advance=lambda: bar.advance(1))
    ctx.info(describe(name, row, spec.original))
    return row


STAGE = StageSpec(
    name="extend",
    version=2,
    config=ExtendConfig,
    run=run,
    output="checkpoint",
    inputs={"checkpoint": Input("checkpoint", help="the base model (from pretrain)"),
            "shards": Input("shards", help="token shards of long text (from tokenize)")},
    help="Extend a checkpoint's context with YaRN (DeepSeek-V3's rope scaling) and a short fine-tune on "
         "long text and passkey documents; reports passkey accuracy before and after.",
    example="dsctl extend --ckpt mini_r1:pretrain --from mini_r1:tokenize --set factor=4 --set max_steps=40",
)
