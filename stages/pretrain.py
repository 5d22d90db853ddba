"""pretrain: train a DeepSeek-V3-style model (MLA, DeepSeekMoE, MTP) on token shards.

Reads a `shards` artifact (from tokenize), writes a `checkpoint`: HF DeepseekV3 weights +
config + tokenizer, with the optimizer/RNG/loop state under training_state/. Resumes
exactly from its last checkpoint after a crash or SIGKILL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dsctl.pipeline.stage import Input, StageContext, StageSpec
from dsctl.train.config import LMTrainConfig


@dataclass
class PretrainConfig(LMTrainConfig):
    model: str = "small"
    """Model preset: "tiny" (tests), "small" (the CPU recipe, ~6M params), "100m" (one GPU)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """DeepseekV3Config keys that replace the preset's, e.g. {num_hidden_layers = 6}."""
    mtp_depth: int = 1
    """Multi-token prediction modules (num_nextn_predict_layers); DeepSeek-V3 uses 1."""
    mtp_weight: float = 0.3
    """λ, the weight of the MTP loss (DeepSeek-V3: 0.3 early in training, then 0.1)."""
    nproc: int = 1
    """Processes to train with (torchrun on this machine: data parallel or a pipeline)."""
    pipeline: Literal["none", "dualpipe", "1f1b"] = "none"
    """Pipeline schedule across the `nproc` ranks (each builds only its stages); "none" = data parallel."""
    expert_parallel: int = 1
    """E > 1: shard the routed experts over groups of E ranks (all-to-all token dispatch);
    every rank still takes its own micro-batches. nproc must be a multiple of E."""


def model_config(cfg: PretrainConfig, vocab_size: int | None = None):
    """The ModelConfig this config trains: the preset, the MTP settings, then the user's
    overrides; `vocab_size` is the tokenizer's (None keeps the preset's, for estimates)."""
    from dsctl.model import ModelConfig

    overrides = {"num_nextn_predict_layers": cfg.mtp_depth, "mtp_loss_weight": cfg.mtp_weight}
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    return ModelConfig.preset(cfg.model, **{**overrides, **cfg.model_overrides})


def preflight(cfg: PretrainConfig) -> None:
    """Refuse, before any stage of the run starts, a model whose sequences are longer than
    its context or whose training step does not fit this machine's device."""
    from dsctl.train.budget import check_context, check_fits

    config = model_config(cfg)
    check_context(config, cfg.seq_len, f"model {cfg.model!r}")
    # A rank holds its own micro-batch (pipeline ranks hold less of the model: not counted).
    check_fits(config, cfg.batch_size, cfg.seq_len, cfg.precision, cfg.device, f"model {cfg.model!r}")


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: PretrainConfig = ctx.config
    if cfg.nproc > 1 or cfg.pipeline != "none" or cfg.expert_parallel != 1:
        from dsctl.train.launch import launch

        return launch(ctx, prepare_training)
    return train_single(ctx)


def train_single(ctx: StageContext) -> dict[str, Any]:
    from dsctl.train.loop import LMTrainer

    job = prepare_training(ctx)
    trainer = LMTrainer(job.model, job.batches, ctx.config, ctx, val_batches=job.val_batches)
    return job.finish(trainer, trainer.fit())


def prepare_training(ctx: StageContext, placement=None):
    """Model, batches and the export step of a pretrain run, shared by the single-process
    and the torchrun paths. A `Placement` says what this rank builds (a pipeline rank: its
    stages only) and how many data-parallel ranks split each step's micro-batches."""
    import torch

    from dsctl.model import DeepSeekV3
    from dsctl.parallel.pipeline_stages import build_model
    from dsctl.tokenizer import Tokenizer
    from dsctl.train.artifacts import tokenizer_dir, unigram_loss
    from dsctl.train.batches import PackedTokens, load_token_split
    from dsctl.train.launch import Placement, TrainJob

    cfg: PretrainConfig = ctx.config
    shards = ctx.input("shards")
    tok_dir = tokenizer_dir(shards)
    tokenizer = Tokenizer.load(tok_dir)
    config = model_config(cfg, tokenizer.vocab_size)
    placement = placement or Placement()
    data_world = placement.data_world
    torch.manual_seed(ctx.seed)
    model = build_model(config, placement.model_parts(config))
    with torch.device("meta"):  # the whole model's sizes, whatever this rank holds
        total, active = DeepSeekV3(config).num_parameters()
    ctx.info(f"model {cfg.model}: {total / 1e6:.2f}M parameters ({active / 1e6:.2f}M active per token)")

    train_docs = load_token_split(shards.path, "train")
    val_docs = load_token_split(shards.path, "validation") or train_docs[-max(1, len(train_docs) // 20):]
    batches = PackedTokens(train_docs, cfg.seq_len, cfg.batch_size, tokenizer.eos_id, ctx.seed,
                           grad_accum=cfg.grad_accum * data_world)
    val = PackedTokens(val_docs, cfg.seq_len, cfg.batch_size, tokenizer.eos_id, ctx.seed, shuffle=False)
    epochs = cfg.max_steps * cfg.batch_size * cfg.grad_accum * data_world / batches.windows_per_epoch
    ctx.info(f"{batches.tokens_per_epoch:,} training tokens per epoch; {cfg.max_steps} steps = {epochs:.2f} epochs")

    def finish(trainer, summary: dict[str, Any]) -> dict[str, Any]:
        eval_targets = torch.cat([val.batch(i)["input_ids"][:, 1:].flatten() for i in range(cfg.eval_batches)]).numpy()
        unigram = unigram_loss(train_docs, eval_targets, tokenizer.vocab_size, tokenizer.eos_id)
        summary["unigram_val_loss"] = round(unigram, 6)
        summary.update(params=total, active_params=active, model=cfg.model)
        trainer.strategy.export(trainer, ctx.out, tok_dir)
        return summary

    return TrainJob(model, batches, val, finish)


STAGE = StageSpec(
    name="pretrain",
    version=1,
    config=PretrainConfig,
    run=run,
    preflight=preflight,
    output="checkpoint",
    inputs={"shards": Input("shards", help="token shards from `tokenize`")},
    help="Pretrain a DeepSeek-V3-style model (MLA + DeepSeekMoE + MTP) on token shards; "
         "FP8, data parallel and DualPipe are options. Resumes exactly after a kill.",
    example="dsctl pretrain --from mini_r1:tokenize --max-steps 200 --precision fp8",
)
