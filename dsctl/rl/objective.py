"""The GRPO objective (DeepSeekMath §4.1, DeepSeek-R1 §2.2.1), one equation per function.

For a prompt q, G completions o_1..o_G are sampled from the old policy and scored with
rule-based rewards r_i. Then, per completion token t of o_i:

    A_i       = r_i − mean(r)          (÷ (std(r) + eps) if scaled)  group-relative advantage
    ratio_i,t = π_θ(o_i,t | q, o_i,<t) / π_old(o_i,t | q, o_i,<t)
    surr_i,t  = min(ratio · A_i, clip(ratio, 1 − ε_low, 1 + ε_high) · A_i)  PPO clipped surrogate
    kl_i,t    = π_ref/π_θ − log(π_ref/π_θ) − 1                     k3 estimator, ≥ 0
    loss      = − Σ_i,t mask · (surr − β · kl) / Σ_i,t mask         token level (default)
              = − 1/N Σ_i 1/|o_i| Σ_t mask · (surr − β · kl)        sequence level

Normalization — token level by default (DAPO, Yu et al. 2025 §3.3), not DeepSeekMath's
per-sequence mean then group mean. The per-sequence mean gives every completion the same
total weight, so each token of a long completion counts less than a token of a short one:
a long wrong answer is punished less per token than a short one, which pushes wrong
answers to grow. Averaging over all completion tokens of the batch weights every token
alike. The sequence form is kept for comparison with DeepSeekMath and TRL/verl runs.

Clip-higher (DAPO §3.1): ε_high > ε_low lets a token the update makes likelier (A > 0)
grow further before the clip stops its gradient. With ε = 0.2 a token at p = 0.01 may
rise only to 0.012 in one update while one at p = 0.9 may rise to anything up to 1: the
clip holds back the rare tokens exploration needs, and the policy's entropy collapses.
ε_low stays at 0.2: a larger one would let updates push unlikely tokens to probability 0,
shrinking what can be sampled at all.

Overlong shaping (DAPO §3.4): a completion cut at L_max tokens has no answer and gets
reward 0, which scores sound but long reasoning as wrong (reward noise). `overlong_penalty`
ramps a length penalty in over the last L_cache tokens instead, so the signal says that
length was the fault; the trainer's `mask_truncated` leaves cut rows out of the loss
altogether (DAPO's overlong filtering).

Advantages — unscaled by default (Dr. GRPO, Liu et al. 2025; TRL's `scale_rewards="none"`).
Dividing by the group's std gives every group that differs at all unit-sized advantages,
however small the difference: with a format bonus, a group of wrong answers where one
sample is malformed pushes up its well-formatted wrong answers as hard as a group with a
right answer pushes them down. Unscaled, a group of 0/1 rewards carries weight in
proportion to its spread p(1 − p): prompts the policy sometimes solves count most, and a
difference of 0.1 counts a tenth of a difference of 1. `scale=True` is DeepSeekMath's form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_EPS = 1e-4
"""Added to the group std: a group whose rewards are all equal gets advantage 0, not NaN."""

LOSS_AGGREGATIONS = ("token", "sequence")
"""What the loss averages over: all completion tokens of the batch, or each completion's
tokens and then the completions (see the module docstring and `token_weights`)."""


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False,
                     eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """rewards (N·G,), consecutive groups of `group_size` -> advantages (N·G,): each reward
    minus its group's mean, divided by the group's population std (÷G) when `scale`."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    centered = groups - groups.mean(-1, keepdim=True)
    if scale:
        centered = centered / (groups.std(-1, unbiased=False, keepdim=True) + eps)
    return centered.view(-1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward.
    lengths (N,) completion tokens; max_len = L_max; buffer = L_cache; 0 turns it off:

        R(|y|) = 0                                  |y| ≤ L_max − L_cache
               = ((L_max − L_cache) − |y|) / L_cache · factor   in between
               = −factor                            |y| ≥ L_max
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    if buffer > max_len:
        raise ValueError(f"overlong buffer {buffer} exceeds the maximum length {max_len}")
    start = max_len - buffer
    return ((start - lengths.float()) / buffer * factor).clamp(min=-factor, max=0.0)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref) (Schulman 2020): unbiased, always ≥ 0,
    and exactly 0 where the two policies agree. The log-ratio is clamped so a token the
    reference finds very unlikely cannot overflow exp()."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - log_ratio - 1.0


def token_weights(mask: torch.Tensor, aggregation: str, n_tokens: float | None = None,
                  n_sequences: float | None = None) -> torch.Tensor:
    """(B, C) weight of each token's loss, so that loss = Σ weight · per-token loss.

    "token":    mask / Σ mask                 every completion token of the batch alike (DAPO)
    "sequence": mask / (|o_i| · N)            each completion's mean, then the mean over them
                                              (DeepSeekMath)
    n_tokens / n_sequences: Σ mask and N of the whole batch when `mask` is one micro-batch of
    it, so the micro-batches' weights are the whole batch's rows of weights.
    """
    mask = mask.float()
    if aggregation == "token":
        total = float(mask.sum() if n_tokens is None else n_tokens)
        return mask / max(total, 1.0)
    if aggregation == "sequence":
        total = float(mask.shape[0] if n_sequences is None else n_sequences)
        return mask / (mask.sum(-1, keepdim=True).clamp(min=1.0) * max(total, 1.0))
    raise ValueError(f"unknown loss aggregation {aggregation!r}; allowed: {', '.join(LOSS_AGGREGATIONS)}")


@dataclass
class LossParts:
    """The loss to backpropagate and what to log about it (plain floats but `loss`)."""

    loss: torch.Tensor
    policy_loss: float
    """−clipped surrogate, aggregated as the loss is (loss = policy_loss + β · kl)."""
    kl: float
    """k3 KL to the reference, aggregated as the loss is."""
    clip_fraction: float
    """Share of completion tokens whose ratio was clipped (the clip changed the objective)."""
    ratio_mean: float
    """Mean ratio over completion tokens."""


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float, kl_coef: float,
              n_tokens: float | None = None, *, clip_eps_high: float = 0.0, aggregation: str = "token",
              n_sequences: float | None = None) -> LossParts:
    """GRPO loss. logp/old_logp/ref_logp/mask (B, C); advantages (B,).

    mask is 1 on completion tokens (through the stop token) and 0 on padding.
    ref_logp may be None when kl_coef is 0 (no reference forward needed).
    clip_eps is ε_low; clip_eps_high is ε_high, 0 for the symmetric clip(1 − ε, 1 + ε).
    aggregation: "token" or "sequence" (see `token_weights`).
    n_tokens / n_sequences: the normalizers, default this batch's completion tokens and rows.
    A caller that splits a rollout batch into micro-batches passes the whole batch's counts,
    so the summed micro-batch losses (and logged parts) equal the loss of the batch in one
    piece.
    """
    weights = token_weights(mask, aggregation, n_tokens, n_sequences).to(logp.dtype)
    # clip_fraction and ratio_mean are shares of tokens whatever the loss averages over
    per_token_share = token_weights(mask, "token", n_tokens).to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + (clip_eps_high or clip_eps))
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    per_token = -surrogate
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs reference log-probs")
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if kl_coef > 0:
        per_token = per_token + kl_coef * kl
    loss = (per_token * weights).sum()
    with torch.no_grad():
        was_clipped = (clipped * adv < ratio * adv).to(logp.dtype)  # min() picked the clipped term
        return LossParts(
            loss=loss,
            policy_loss=float((-surrogate * weights).sum()),
            kl=float((kl * weights).sum()),
            clip_fraction=float((was_clipped * per_token_share).sum()),
            ratio_mean=float((ratio * per_token_share).sum()),
        )
