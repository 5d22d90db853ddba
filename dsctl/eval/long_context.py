"""Context extension with YaRN: the scaled RoPE config, and the long-sequence batches the
extend stage fine-tunes on.

YaRN as DeepSeek-V3 applies it (`dsctl.model.rope`): rotary pairs that turn more than
β_fast times over the original context keep their frequency, pairs that turn fewer than
β_slow times are slowed by the factor s, a ramp blends the pairs in between, and the
attention logits are sharpened by mscale² = (0.1 · ln s + 1)². The weights do not
change; a short fine-tune on long documents then teaches the model to use the range.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np

from dsctl.eval.passkey import make_passkey_document, minimum_length, random_key

IGNORE_INDEX = -100


def trained_context(manifest: dict[str, Any], model_config: Any) -> int:
    """The context a checkpoint was trained at: YaRN's scaled length if it was already
    extended, else the `seq_len` its training stage used, else max_position_embeddings."""
    rs = model_config.rope_scaling
    if rs:
        return int(rs["original_max_position_embeddings"] * rs["factor"])
    seq_len = manifest.get("config", {}).get("seq_len")
    return int(seq_len) if seq_len else int(model_config.max_position_embeddings)


def yarn_rope_scaling(factor: float, original_context: int, beta_fast: float = 32.0,
                      beta_slow: float = 1.0, mscale: float = 1.0) -> dict[str, Any]:
    """The `rope_scaling` entry of config.json, with DeepSeek-V3's fields and values
    (mscale = mscale_all_dim, so cos/sin stay unscaled and only the softmax sharpens)."""
    if factor < 1:
        raise ValueError(f"the YaRN factor must be >= 1, got {factor}")
    return {"type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original_context),
            "beta_fast": float(beta_fast), "beta_slow": float(beta_slow),
            "mscale": float(mscale), "mscale_all_dim": float(mscale)}


def with_yarn(model: Any, factor: float, original_context: int, **yarn: float) -> Any:
    """A copy of `model` whose RoPE is YaRN-scaled by `factor` over `original_context`.

    A model that is already scaled keeps its original context and gets the product of
    both factors, so extending twice by 2 equals extending once by 4.
    """
    from dsctl.model import DeepSeekV3

    old = model.config.rope_scaling
    if old:
        factor, original_context = factor * float(old["factor"]), int(old["original_max_position_embeddings"])
    config = dataclasses.replace(model.config, rope_scaling=yarn_rope_scaling(factor, original_context, **yarn),
                                 max_position_embeddings=int(round(original_context * factor)))
    scaled = DeepSeekV3(config)
    scaled.load_state_dict(model.state_dict())  # rope tables are buffers rebuilt from config
    return scaled.to(next(model.parameters()).device)


class LongContextBatches:
    """Training batches for context extension; batch n is a pure function of (seed, n).

    Each step is either a passkey step (with probability `passkey_fraction`) or a long-text
    step. Long-text rows are `seq_len` windows of the packed corpus with continuous
    positions across document boundaries, so every position up to seq_len is trained.

    A passkey step draws one length L in [seq_len/8, seq_len] and holds
    batch_size · seq_len / L documents of exactly L tokens (the same token budget as a
    long-text step), each with its needle at a random depth. Short documents teach the
    retrieval itself cheaply, long ones teach it at the new positions. The needle, the
    question and the answer are scored, the filler is not: it is trivially predictable and
    would drown the few tokens that matter in the per-token mean. The needle states the key
    twice ("…is 71432. Remember it. 71432 is…"), so its second copy is a short-range copy
    that teaches the same mechanism the answer needs across the whole context. Whole steps
    of one kind keep passkey and long-text tokens from diluting each other.
    """

    def __init__(self, corpus: Any, tokenizer: Any, seq_len: int, batch_size: int, seed: int,
                 passkey_fraction: float, grad_accum: int = 1):
        self.corpus, self.tokenizer = corpus, tokenizer
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.passkey_fraction, self.grad_accum = passkey_fraction, grad_accum
        self.min_length = max(seq_len // 8, 2 * minimum_length(tokenizer))
        if self.min_length > seq_len:
            raise ValueError(f"seq_len {seq_len} is too short for a passkey document ({self.min_length} tokens)")

    def is_passkey_step(self, step: int, micro: int = 0) -> bool:
        return random.Random(f"{self.seed}:kind:{step}:{micro}").random() < self.passkey_fraction

    def batch(self, step: int, micro: int = 0) -> dict[str, Any]:
        import torch

        if not self.is_passkey_step(step, micro):
            rows = self.corpus.batch(step, micro)["input_ids"]
            return {"input_ids": rows, "labels": rows.clone()}
        rng = random.Random(f"{self.seed}:passkey:{step}:{micro}")
        length = rng.randint(self.min_length, self.seq_len)
        n_rows = max(self.batch_size, self.batch_size * self.seq_len // length)
        ids = np.zeros((n_rows, length), np.int64)
        labels = np.full((n_rows, length), IGNORE_INDEX, np.int64)
        for b in range(n_rows):
            doc = make_passkey_document(self.tokenizer, length, rng.random(), random_key(rng))
            ids[b] = doc.prompt_ids + doc.answer_ids
            labels[b, doc.needle_start:doc.needle_end] = ids[b, doc.needle_start:doc.needle_end]
            labels[b, doc.question_start:] = ids[b, doc.question_start:]
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}

