"""Batched sampling from a checkpoint and verification against the reasoning tasks.

Shared by rejection-sample, distill, sft's summary accuracy (and eval/grpo later):

    problems = task_problems(["arithmetic"], "eval", 64, seed=0)
    result = greedy_accuracy(model, tokenizer, problems, max_new_tokens=128)
    result.accuracy, result.tokens_per_s

    completions = sample(model, tokenizer, [p.prompt for p in problems], n=4,
                         max_new_tokens=128, temperature=0.8, top_p=0.95, seed=0)

Prompts go through the tokenizer's chat template (`chat_prompt`, which ends with the
assistant header); decoding stops at eos or at `</answer>` — once the answer is closed,
anything more could only add a second answer, which `well_formatted` rejects anyway.
Generation uses the model's MLA latent cache (dsctl.model.generate), many prompts per
forward pass. Randomness is a pure function of (seed, batch number), so the same call
gives the same samples, and a caller that resumes at batch b gets what an uninterrupted
run would have.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from dsctl.tasks import Problem, reward, split_problems

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


@dataclass
class AccuracyResult:
    """Greedy accuracy of a model on a list of problems."""

    n: int
    accuracy: float
    """Share of problems whose last <answer> verifies."""
    format_rate: float
    """Share of completions that are exactly one think block then one answer."""
    per_family: dict[str, float]
    """Accuracy per task family."""
    mean_tokens: float
    """Mean completion length in tokens."""
    tokens_per_s: float
    """Generated tokens per second of wall time (batched greedy decoding, cache on)."""
    completions: list[Completion] = field(default_factory=list, repr=False)

    def summary(self, prefix: str = "") -> dict[str, Any]:
        """Flat metrics for a stage summary, e.g. prefix="eval_" -> eval_accuracy."""
        out = {f"{prefix}accuracy": round(self.accuracy, 4), f"{prefix}format_rate": round(self.format_rate, 4),
               f"{prefix}mean_tokens": round(self.mean_tokens, 1), f"{prefix}tokens_per_s": round(self.tokens_per_s, 1),
               f"{prefix}problems": self.n}
        out.update({f"{prefix}accuracy_{fam}": round(acc, 4) for fam, acc in sorted(self.per_family.items())})
        return out


def task_problems(families: Sequence[str], split: str, n: int, seed: int,
                  difficulty: dict[str, dict] | None = None) -> list[Problem]:
    """`n` problems of `split` spread evenly over `families` (the first ones get the
    remainder), interleaved family by family so any prefix is a balanced sample.
    `difficulty` maps a family name to its difficulty overrides."""
    if not families:
        raise ValueError("no task families given")
    difficulty = difficulty or {}
    unknown = set(difficulty) - set(families)
    if unknown:
        raise ValueError(f"difficulty names families not in use: {sorted(unknown)}; families: {list(families)}")
    per = [n // len(families) + (i < n % len(families)) for i in range(len(families))]
    lists = [split_problems(f, split, k, seed, difficulty.get(f)) for f, k in zip(families, per)]
    return [lst[i] for i in range(max(per, default=0)) for lst in lists if i < len(lst)]


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


def greedy_accuracy(model, tokenizer, problems: Sequence[Problem], *, max_new_tokens: int = 128,
                    batch_size: int = 64) -> AccuracyResult:
    """Greedy-decode every problem once and verify the answers."""
    if not problems:
        raise ValueError("greedy_accuracy needs at least one problem")
    started = time.perf_counter()
    completions = [c[0] for c in sample(model, tokenizer, [p.prompt for p in problems], n=1,
                                        max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)]
    elapsed = max(time.perf_counter() - started, 1e-9)
    scores = [reward(p, c.text) for p, c in zip(problems, completions)]
    by_family: dict[str, list[int]] = defaultdict(list)
    for p, s in zip(problems, scores):
        by_family[p.family].append(s["correct"])
    total_tokens = sum(c.n_tokens for c in completions)
    return AccuracyResult(
        n=len(problems),
        accuracy=sum(s["correct"] for s in scores) / len(problems),
        format_rate=sum(s["format"] for s in scores) / len(problems),
        per_family={f: sum(v) / len(v) for f, v in by_family.items()},
        mean_tokens=total_tokens / len(problems),
        tokens_per_s=total_tokens / elapsed,
        completions=completions,
    )
