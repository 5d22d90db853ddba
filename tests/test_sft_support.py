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
        for p in split_problems(family, "train", n, seed=0, difficulty=EASY.get(family)):
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
