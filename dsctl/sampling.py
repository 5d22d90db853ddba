"""Batched sampling of chat completions from a model: what rejection_sample, grpo's
held-out check and eval decode with.

    completions = sample(model, tokenizer, [p.prompt for p in problems], n=4,
                         max_new_tokens=128, temperature=0.8, top_p=0.95, seed=0)
    completions[0][0].text, completions[0][0].finished

Prompts go through the tokenizer's chat template (`chat_prompt`, which ends with the
assistant header); decoding stops at eos or at `</answer>` — once the answer is closed,
anything more could only add a second answer, which `well_formatted` rejects anyway.
Generation uses the model's MLA latent cache (dsctl.model.generate), many prompts per
forward pass. Randomness is a pure function of (seed, batch number), so the same call
gives the same samples, and a caller that resumes at batch b gets what an uninterrupted
run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ANSWER_CLOSE = "</answer>"


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt."""

    text: str
    """Decoded completion, special tokens kept as text (`<think>…</answer>`), eos removed."""
    n_tokens: int
    """Generated tokens, the stop token included."""
    finished: bool
    """True when a stop token ended it; False when it was cut at max_new_tokens."""


def stop_token_ids(tokenizer) -> list[int]:
    """eos, and `</answer>` when the tokenizer has it as one token."""
    ids = [tokenizer.eos_id]
    close = getattr(tokenizer, "special_tokens", {}).get(ANSWER_CLOSE)
    if close is not None:
        ids.append(close)
    return ids


def _decode(tokenizer, tokens: list[int]) -> str:
    drop = {tokenizer.eos_id, getattr(tokenizer, "pad_id", None)}
    return tokenizer.decode([t for t in tokens if t not in drop])


def sample(model, tokenizer, prompts: Sequence[str], *, n: int = 1, max_new_tokens: int = 128,
           temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
           first_batch: int = 0) -> list[list[Completion]]:
    """`n` completions for each prompt (a user message), `batch_size` sequences per
    generate call. Returns one list of `n` completions per prompt, in order.

    The k-th batch draws with seed (seed, first_batch + k): a caller that splits the
    prompts into chunks and passes each chunk's batch offset gets the same samples as
    one call over all prompts with the same batch_size.
    """
    from dsctl.model import generate

    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    rows = [(i, tokenizer.chat_prompt(p)) for i, p in enumerate(prompts) for _ in range(n)]
    stops = stop_token_ids(tokenizer)
    out: list[list[Completion]] = [[] for _ in prompts]
    for b, lo in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[lo:lo + batch_size]
        result = generate(model, [ids for _, ids in chunk], max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, stop_token_ids=stops,
                          seed=batch_seed(seed, first_batch + b))
        for (i, _), tokens, reason in zip(chunk, result.tokens, result.finish_reasons):
            out[i].append(Completion(_decode(tokenizer, tokens), len(tokens), reason != "length"))
    return out


def batch_seed(seed: int, batch: int) -> int:
    """A generator seed for batch `batch` of a run seeded `seed` (distinct, stable)."""
    return (seed * 1_000_003 + batch * 7919 + 1) % (2**63 - 1)
