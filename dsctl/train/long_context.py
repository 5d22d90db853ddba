"""The long-sequence batches the extend stage fine-tunes on: packed long text and passkey
documents, each batch a pure function of (seed, step)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from dsctl.model.loss import IGNORE_INDEX
from dsctl.tasks.passkey import make_passkey_document, minimum_length, random_key


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
