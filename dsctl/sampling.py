"""Batched sampling of chat completions from a model: what rejection_sample, grpo's
held-out check and eval decode with.

    completions = sample(model, tokenizer, [p.prompt for p in problems], n=4,
                         max_new_tokens=128, temperature=0.8, top_p=0.95, seed=0)
    completions[0][0].text, completions[0][0].finished

Prompts go through the tokenizer's chat template (`chat_prompt`, which ends with the
assistant header); decoding stops at eos or at `</answer>` — once the answer is closed,
anything more could only add a second answer, which `well_formatted` rejects anyway.
`stop_rule` and `completion_text` say what ends a completion and what its text is, for
every sampler (this one and GRPO's rollouts): `</answer>` is one token with dsctl's
tokenizer and a stop string read through `decode` with an imported one that spells it in
several, so a completion's text and `finished` mean the same with either.
Generation uses the model's MLA latent cache (dsctl.model.generate), many prompts per
forward pass. Randomness is a pure function of (seed, batch number), so the same call
gives the same samples, and a caller that resumes at batch b gets what an uninterrupted
run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

ANSWER_CLOSE = "</answer>"


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt."""

    text: str
    """Decoded completion, special tokens kept as text (`<think>…</answer>`), eos removed,
    nothing after `</answer>`."""
    n_tokens: int
    """Generated tokens, the stop token(s) included."""
    finished: bool
    """True when eos or `</answer>` ended it; False when it was cut at max_new_tokens."""


def stop_rule(tokenizer) -> dict[str, Any]:
    """`generate`'s keyword arguments that end a completion: eos, and `</answer>` as a token
    when the tokenizer has it as one, else as a string read back through its decode."""
    close = tokenizer.special_tokens.get(ANSWER_CLOSE)
    if close is not None:
        return {"stop_token_ids": [tokenizer.eos_id, close]}
    return {"stop_token_ids": [tokenizer.eos_id], "stop_strings": [ANSWER_CLOSE], "decode": tokenizer.decode}


def completion_text(tokenizer, tokens: Sequence[int]) -> str:
    """The text of a completion's tokens: eos and pad dropped, and cut after the first
    `</answer>` (the token that completes a spelled-out one may carry more, e.g. `>\n`)."""
    drop = {tokenizer.eos_id, tokenizer.pad_id}
    text = tokenizer.decode([t for t in tokens if t not in drop])
    close = text.find(ANSWER_CLOSE)
    return text if close < 0 else text[:close + len(ANSWER_CLOSE)]


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
    stops = stop_rule(tokenizer)
    out: list[list[Completion]] = [[] for _ in prompts]
    for b, lo in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[lo:lo + batch_size]
        result = generate(model, [ids for _, ids in chunk], max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, seed=batch_seed(seed, first_batch + b), **stops)
        for (i, _), tokens, reason in zip(chunk, result.tokens, result.finish_reasons):
            out[i].append(Completion(completion_text(tokenizer, tokens), len(tokens), reason != "length"))
    return out


def batch_seed(seed: int, batch: int) -> int:
    """A generator seed for batch `batch` of a run seeded `seed` (distinct, stable)."""
    return (seed * 1_000_003 + batch * 7919 + 1) % (2**63 - 1)
