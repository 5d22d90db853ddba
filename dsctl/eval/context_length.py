"""How a model does at each context length: passkey retrieval accuracy and the loss on
long validation windows (over the whole window, and over the positions past the
original context alone) — what the extend stage measures before and after YaRN.

    spec = LengthEval(original=256, lengths=(256, 512, 1024), passkey_trials=12)
    row = length_row(model, tokenizer, shards_dir, spec)          # {"512": {"accuracy", "val_loss", …}}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsctl.eval.passkey import passkey_accuracy
from dsctl.eval.perplexity import validation_perplexity


@dataclass(frozen=True)
class LengthEval:
    original: int
    """The base's trained context."""
    lengths: tuple[int, ...]
    """Context lengths measured."""
    passkey_trials: int = 8
    passkey_batch_size: int = 4
    batch_size: int = 4
    """Validation windows per batch."""
    eval_batches: int = 2
    """Validation batches per length (0 = no loss, passkey only)."""
    seed: int = 0


def length_row(model: Any, tokenizer: Any, shards_dir: Path, spec: LengthEval,
               advance: Callable[[], None] | None = None) -> dict[str, Any]:
    """Passkey accuracy (and long-window validation loss) of one model at each length; past
    the original context also the loss on positions >= original alone, where the base is
    off its training range (the whole-window mean dilutes it with the first `original`)."""
    row: dict[str, Any] = {}
    for n in spec.lengths:
        row[str(n)] = passkey_accuracy(model, tokenizer, n, spec.passkey_trials, seed=spec.seed,
                                       batch_size=spec.passkey_batch_size)
        if spec.eval_batches:
            loss = validation_perplexity(model, shards_dir, tokenizer.eos_id, n, spec.batch_size, spec.eval_batches,
                                         doc_masking=False)
            row[str(n)]["val_loss"] = loss["val_loss"]
            if n > spec.original:
                row[str(n)]["val_loss_past_original"] = validation_perplexity(
                    model, shards_dir, tokenizer.eos_id, n, spec.batch_size, spec.eval_batches,
                    doc_masking=False, from_position=spec.original)["val_loss"]
        if advance is not None:
            advance()
    return row


def describe(name: str, row: dict[str, Any], original: int) -> str:
    """One log line for a row: passkey and loss at each length."""
    return f"{name}: " + ", ".join(
        f"@{n} passkey {r['accuracy']:.2f} loss {r.get('val_loss', float('nan')):.3f}"
        + (f" (past {original}: {r['val_loss_past_original']:.3f})" if "val_loss_past_original" in r else "")
        for n, r in row.items())


def short_context_loss(model: Any, tokenizer: Any, shards_dir: Path, spec: LengthEval) -> float | None:
    """Validation loss at the original context with attention inside each document, as
    pretraining measured it: what an extension may cost on short text."""
    if not spec.eval_batches:
        return None
    return validation_perplexity(model, shards_dir, tokenizer.eos_id, spec.original, spec.batch_size,
                                 spec.eval_batches)["val_loss"]


def headline(table: dict[str, dict[str, Any]], short_loss: dict[str, Any], spec: LengthEval,
             multiples: list[float]) -> dict[str, Any]:
    """The summary numbers of a base/yarn/extended table: passkey accuracy at each multiple
    of the original context, longest first, and the losses when they were measured."""
    longest_first = sorted(zip(multiples, spec.lengths), reverse=True)
    models = ("extended", "base", "yarn")
    out = {f"passkey_{model}_{_mult(m)}x": table[model][str(n)]["accuracy"]
           for model in models for m, n in longest_first}
    if spec.eval_batches:
        out.update({f"val_loss_{model}_{_mult(m)}x": table[model][str(n)]["val_loss"]
                    for model in models for m, n in longest_first})
        out.update({f"val_loss_past_original_{model}_{_mult(m)}x": table[model][str(n)]["val_loss_past_original"]
                    for model in models for m, n in longest_first if n > spec.original})
        out.update({f"val_loss_doc_masked_{model}": loss for model, loss in short_loss.items()})
    return out


def _mult(m: float) -> str:
    return f"{m:g}".replace(".", "_")
