"""Validation loss and perplexity of a checkpoint on held-out token shards."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def validation_perplexity(model: Any, shards_dir: Path, eos_id: int, seq_len: int, batch_size: int,
                          max_batches: int, doc_masking: bool = True, from_position: int = 0) -> dict[str, float]:
    """Token-weighted mean next-token loss over the first `max_batches` batches of windows
    of the validation split (the train split when there is none); perplexity = exp(loss).

    doc_masking=True keeps attention inside each document as in pretraining; False makes
    each window one context with positions 0..seq_len-1, which is how long-context
    perplexity is measured (documents shorter than the window still share it).

    from_position=k scores only the tokens at window positions >= k (each predicted from
    the positions before it); the rest of the window is still read as context. With
    doc_masking=False that is the loss on positions a model trained at context k never
    saw; 0 scores every position.
    """
    import torch

    from dsctl.model import compute_loss
    from dsctl.model.loss import IGNORE_INDEX
    from dsctl.train.batches import PackedTokens, load_token_split

    if not 0 <= from_position < seq_len:
        raise ValueError(f"from_position must be in [0, seq_len={seq_len}), got {from_position}")
    docs = load_token_split(shards_dir, "validation") or load_token_split(shards_dir, "train")
    windows = PackedTokens(docs, seq_len, batch_size, eos_id, seed=0, shuffle=False)
    n_batches = max(1, min(max_batches, windows.windows_per_epoch // batch_size))
    total, count = 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(n_batches):
            batch = {k: v.to(device) for k, v in windows.batch(i).items()}
            labels = batch["labels"]
            if from_position:
                labels = labels.clone()
                labels[:, :from_position] = IGNORE_INDEX  # label t is the target predicted at t-1
            out = compute_loss(model, batch["input_ids"], labels, doc_ids=batch["doc_ids"] if doc_masking else None,
                               mtp_weight=0.0)
            total += float(out.lm_loss) * out.n_tokens
            count += out.n_tokens
    loss = total / max(count, 1)
    return {"val_loss": round(loss, 4), "val_ppl": round(math.exp(loss), 3)}
