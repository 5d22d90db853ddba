"""The GRPO objective (DeepSeekMath §4.1, DeepSeek-R1 §2.2.1), one equation per function.

For a prompt q, G completions o_1..o_G are sampled from the old policy and scored with
rule-based rewards r_i. Then, per completion token t of o_i:

    A_i       = r_i − mean(r)          (÷ (std(r) + eps) if scaled)  group-relative advantage
    ratio_i,t = π_θ(o_i,t | q, o_i,<t) / π_old(o_i,t | q, o_i,<t)
    surr_i,t  = min(ratio · A_i, clip(ratio, 1 − ε, 1 + ε) · A_i)  PPO clipped surrogate
    kl_i,t    = π_ref/π_θ − log(π_ref/π_θ) − 1                     k3 estimator, ≥ 0
    loss      = − Σ_i,t mask · (surr − β · kl) / Σ_i,t mask

Normalization — token level (DAPO, Yu et al. 2025 §3.3), not DeepSeekMath's per-sequence
mean then group mean. The per-sequence mean gives every completion the same total weight,
so each token of a long completion counts less than a token of a short one: a long wrong
answer is punished less per token than a short one, which pushes wrong answers to grow.
Averaging over all completion tokens of the batch weights every token alike.

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


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref) (Schulman 2020): unbiased, always ≥ 0,
    and exactly 0 where the two policies agree. The log-ratio is clamped so a token the
    reference finds very unlikely cannot overflow exp()."""
    log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - log_ratio - 1.0


@dataclass
class LossParts:
    """The loss to backpropagate and what to log about it (plain floats but `loss`)."""

    loss: torch.Tensor
    policy_loss: float
    """−mean clipped surrogate over completion tokens."""
    kl: float
    """Mean k3 KL to the reference over completion tokens."""
    clip_fraction: float
    """Share of completion tokens whose ratio was clipped (the clip changed the objective)."""
    ratio_mean: float


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float, kl_coef: float,
              n_tokens: float | None = None) -> LossParts:
    """Token-level GRPO loss. logp/old_logp/ref_logp/mask (B, C); advantages (B,).

    mask is 1 on completion tokens (through the stop token) and 0 on padding.
    ref_logp may be None when kl_coef is 0 (no reference forward needed).
    n_tokens: the normalizer, default this batch's completion tokens. A caller that splits
    a rollout batch into micro-batches passes the whole batch's count, so the summed
    micro-batch losses (and logged parts) equal the loss of the batch in one piece.
    """
    mask = mask.to(logp.dtype)
    n_tokens = mask.sum().clamp(min=1.0) if n_tokens is None else max(float(n_tokens), 1.0)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    per_token = -surrogate
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs reference log-probs")
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if kl_coef > 0:
        per_token = per_token + kl_coef * kl
    loss = (per_token * mask).sum() / n_tokens
    with torch.no_grad():
        was_clipped = (clipped * adv < ratio * adv).to(mask.dtype)  # min() picked the clipped term
        return LossParts(
            loss=loss,
            policy_loss=float((-surrogate * mask).sum() / n_tokens),
            kl=float((kl * mask).sum() / n_tokens),
            clip_fraction=float((was_clipped * mask).sum() / n_tokens),
            ratio_mean=float((ratio * mask).sum() / n_tokens),
        )
