"""Rollouts for GRPO: pick prompts, sample a group of completions per prompt, score them
with the rule-based rewards, and lay them out for log-prob scoring.

    problems = step_problems(pool, n_prompts=4, seed=0, step=12)
    ro = sample_groups(model, tokenizer, problems, group_size=8, max_new_tokens=96, seed=step_seed(0, 12))
    batch = ro.batch(pad_id)            # left-padded prompts + right-padded completions
    logp, balance = completion_logprobs(model, batch)   # (B, C) log π(o_t | q, o_<t)

Everything random is a pure function of (seed, step): which prompts, and the sampler's
generator seed. A run resumed at step s therefore samples exactly what an uninterrupted
run would have sampled at step s.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from dsctl.sampling import completion_text, stop_rule
from dsctl.tasks import Problem, reward
from dsctl.tasks.grading import check_reward_errors


def step_problems(pool: Sequence[Problem], n_prompts: int, seed: int, step: int) -> list[Problem]:
    """`n_prompts` distinct problems of the training pool for step `step` (without
    replacement within a step; a string seed, so it does not depend on Python's hash salt)."""
    if n_prompts > len(pool):
        raise ValueError(f"prompts_per_step={n_prompts} exceeds the training pool of {len(pool)} problems")
    return random.Random(f"grpo-prompts:{seed}:{step}").sample(list(pool), n_prompts)


def step_seed(seed: int, step: int) -> int:
    """The sampler seed for step `step` of a run seeded `seed`."""
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


@dataclass
class ScoringBatch:
    """(prompt, completion) rows laid out for one forward pass.

    Prompts are left-padded to a common length P, completions right-padded to C, so every
    completion starts at column P and its log-probs are one slice of the logits.
    """

    input_ids: torch.Tensor
    """(B, P + C) token ids, pad where attention_mask is 0."""
    attention_mask: torch.Tensor
    """(B, P + C) 1 on real tokens (prompt and completion), 0 on padding."""
    completion_mask: torch.Tensor
    """(B, C) 1 on completion tokens up to and including the stop token."""
    prompt_len: int
    """P: the column where completions start."""

    def rows(self, lo: int, hi: int) -> "ScoringBatch":
        """Rows lo..hi-1 (a micro-batch), same column layout."""
        return ScoringBatch(self.input_ids[lo:hi], self.attention_mask[lo:hi], self.completion_mask[lo:hi],
                            self.prompt_len)


def build_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> ScoringBatch:
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("build_batch needs one completion per prompt and at least one row")
    if any(len(c) == 0 for c in completions):
        raise ValueError("every completion needs at least one token")
    B, P, C = len(prompts), max(len(p) for p in prompts), max(len(c) for c in completions)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros(B, P + C, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids[row, P - len(p):P] = torch.tensor(list(p), dtype=torch.long)
        ids[row, P:P + len(c)] = torch.tensor(list(c), dtype=torch.long)
        attn[row, P - len(p):P + len(c)] = 1
    return ScoringBatch(ids, attn, attn[:, P:].clone(), P)


def completion_logprobs(model, batch: ScoringBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(o_t | q, o_<t) for every completion column, (B, C), and the forward's MoE
    balance loss. Completion token t sits at column P + t and is predicted by the logits at
    P + t − 1, so only the last C + 1 positions need the output head. Logits are divided by
    the sampling temperature so the scored policy is the one that was sampled from."""
    device = model.embed_tokens.weight.device
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
    C = ids.shape[1] - batch.prompt_len
    out = model.outputs(ids, attention_mask=attn, logits_to_keep=C + 1)
    logits = out.logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    targets = ids[:, batch.prompt_len:]
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logp, out.balance_loss


@dataclass
class Rollout:
    """G completions for each of N prompts, group by group (row i belongs to prompt i // G)."""

    problems: list[Problem]
    """The problem of each row (each repeated G times)."""
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Generated ids, the stop token included when one ended the row."""
    texts: list[str]
    rewards: torch.Tensor
    """(N·G,) total reward: correct + format_weight · format."""
    correct: torch.Tensor
    formatted: torch.Tensor
    truncated: torch.Tensor
    """(N·G,) 1 where max_new_tokens cut the completion."""
    seconds: float
    reasons: list[str]
    """Why each row scored what it did: correct, partial, wrong, no_answer or error
    (dsctl.tasks.grading.REASONS)."""

    def batch(self, pad_id: int) -> ScoringBatch:
        return build_batch(self.prompt_ids, self.completion_ids, pad_id)

    @property
    def n_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def sample_groups(model, tokenizer, problems: Sequence[Problem], *, group_size: int, max_new_tokens: int,
            temperature: float, top_p: float, seed: int, format_weight: float = 0.0,
            max_reward_errors: float = 1.0) -> Rollout:
    """Sample `group_size` completions per problem (one batched generate call) and reward
    them: score + format_weight · format. More than `max_reward_errors` of the batch's
    rewards failing to compute raises RewardError (dsctl.tasks.grading)."""
    from dsctl.model import generate

    rows = [p for p in problems for _ in range(group_size)]
    prompt_ids = [tokenizer.chat_prompt(p.prompt) for p in rows]
    started = time.perf_counter()
    result = generate(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      seed=seed, **stop_rule(tokenizer))
    seconds = time.perf_counter() - started
    texts = [completion_text(tokenizer, tokens) for tokens in result.tokens]
    scores = [reward(p, text, format_weight) for p, text in zip(rows, texts)]
    check_reward_errors(scores, max_reward_errors, "grpo rollout")
    return Rollout(
        problems=rows, prompt_ids=prompt_ids, completion_ids=[list(t) for t in result.tokens], texts=texts,
        rewards=torch.tensor([s["total"] for s in scores], dtype=torch.float32),
        correct=torch.tensor([s["correct"] for s in scores], dtype=torch.float32),
        formatted=torch.tensor([s["format"] for s in scores], dtype=torch.float32),
        truncated=torch.tensor([r == "length" for r in result.finish_reasons], dtype=torch.float32),
        seconds=seconds, reasons=[s["reason"] for s in scores],
    )
