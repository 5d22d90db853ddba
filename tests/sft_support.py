"""Shared fixtures for the sft / rejection_sample / distill / sampling tests (no tests here):
a small real tokenizer trained on task text, and tiny checkpoint artifacts built on it."""

from __future__ import annotations

from pathlib import Path

import torch

from dsctl.tasks import reasoning_target, split_problems

FAMILIES = ["arithmetic", "countdown", "equations"]
EASY = {"arithmetic": {"max_digits": 2}}


def task_texts(n: int = 150) -> list[str]:
    texts = []
    for family in FAMILIES:
        for p in split_problems(family, "worked", n, seed=0, difficulty=EASY.get(family)):
            texts += [p.prompt, reasoning_target(p)]
    return texts


def make_tokenizer(out: Path, vocab_size: int = 600):
    from dsctl.tokenizer import Tokenizer

    return Tokenizer.train(iter(task_texts()), vocab_size, out, seed=0)


def make_checkpoint(out: Path, tokenizer_from: Path, seed: int = 0, **overrides) -> Path:
    """A tiny fresh DeepSeekV3 checkpoint directory (HF weights + tokenizer files)."""
    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.tokenizer import Tokenizer
    from dsctl.train.artifacts import export_checkpoint

    tokenizer = Tokenizer.load(tokenizer_from)
    torch.manual_seed(seed)
    config = ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, **overrides)
    export_checkpoint(DeepSeekV3(config), out, tokenizer_from, None)
    return out


def tiny_train_config(**kw) -> dict:
    """Trainer settings small enough for a test (CPU, fp32, a few steps)."""
    base = dict(max_steps=6, batch_size=4, seq_len=128, warmup_steps=1, checkpoint_every=3, eval_every=0,
                eval_batches=1, device="cpu", precision="fp32", threads=1)
    return {**base, **kw}


def memorized_checkpoint(out: Path, tok_dir: Path, problems, steps: int = 60, seed: int = 0) -> Path:
    """A tiny checkpoint fine-tuned (real Trainer) until it answers `problems` by heart:
    a model that solves known prompts, for tests of acceptance and accuracy."""
    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.pipeline.stage import StageContext, StageSpec
    from dsctl.progress import Reporter
    from dsctl.tasks import reasoning_target
    from dsctl.tokenizer import Tokenizer
    from dsctl.train.artifacts import export_checkpoint
    from dsctl.train.batches import PackedExamples
    from dsctl.train.config import LMTrainConfig
    from dsctl.train.examples import chat, encode_conversations
    from dsctl.train.loop import LMTrainer

    tokenizer = Tokenizer.load(tok_dir)
    examples, _ = encode_conversations(tokenizer, [chat(p.prompt, reasoning_target(p)) for p in problems], 128)
    cfg = LMTrainConfig(**tiny_train_config(max_steps=steps, lr=1e-2, checkpoint_every=10**6))
    ctx = StageContext(StageSpec("memorize", 1, LMTrainConfig, lambda c: None, "checkpoint"), cfg, seed, {},
                       out / "_train" / "artifact", out / "_train" / "scratch", Reporter(quiet=True), "memorize", "k")
    ctx.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    LMTrainer(model, PackedExamples(examples, 128, 4, tokenizer.pad_id, seed), cfg, ctx).fit()
    export_checkpoint(model, out, tok_dir, None)
    return out


def fail_once_at_step(monkeypatch, step: int, run) -> None:
    """Run `run()` with LMTrainer crashing at `step` (a simulated crash mid-stage, after the
    checkpoints before it) and expect the stage to fail; the trainer is whole again after."""
    import pytest

    from dsctl.errors import StageFailed
    from dsctl.train import loop

    real_step = loop.LMTrainer.train_step

    def crashing_step(self, at):
        if at == step:
            raise RuntimeError("simulated crash")
        return real_step(self, at)

    monkeypatch.setattr(loop.LMTrainer, "train_step", crashing_step)
    with pytest.raises(StageFailed):
        run()
    monkeypatch.setattr(loop.LMTrainer, "train_step", real_step)
