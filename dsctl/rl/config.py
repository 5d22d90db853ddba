"""GRPO hyper-parameters, and where each default comes from.

DeepSeekMath (Shao et al. 2024, §4.2) trained its 7B model with G = 64 samples per
question, lr 1e-6, β = 0.04, 16 questions per step, one update per rollout (μ = 1) and
ε = 0.2; DeepSeek-R1 keeps the objective with rule-based rewards. The defaults keep the
algorithm and scale the budget to a few-million-parameter model on a CPU: G = 8, 32
prompts per step, lr 5e-5, rollouts at eval's temperature 0.6, completions capped just
above the longest worked solution. Rewards are correctness only and advantages unscaled
(see `format_weight`, `scale_advantages`). Measured on mini_r1's sft model (pass@1 0.81,
400 held-out problems): T 1.0 / lr 1e-4 / 16 prompts lost 0.08 pass@1, T 0.6 / lr 2e-5
gained 0.01, T 0.6 / lr 5e-5 / 32 prompts gained 0.06 (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsctl.train.config import TrainConfig


@dataclass
class GRPOConfig(TrainConfig):
    max_steps: int = 20
    """GRPO steps; each step = one rollout batch and `update_epochs` optimizer updates."""
    lr: float = 5e-5
    """Peak AdamW learning rate (DeepSeekMath: 1e-6 for 7B; raised for a few-million-parameter
    model, but Adam's full-size steps on a sparse 0/1 signal made 1e-4 lose accuracy)."""
    batch_size: int = 32
    """Rows (completions) per forward/backward micro-batch of an update; a rollout batch of
    prompts_per_step × group_size rows is split into such micro-batches and their gradients
    summed, so this bounds memory without changing the result."""
    warmup_steps: int = 0
    """Warm-up steps (the policy starts from an SFT model, so there is nothing to warm)."""
    schedule: Literal["cosine", "wsd", "constant"] = "constant"
    """DeepSeekMath's RL used a constant learning rate."""
    weight_decay: float = 0.0
    """No decay: RL steps are few and the KL term already anchors the weights."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many GRPO steps (and at the end)."""
    grad_accum: int = 1
    """Not used by grpo: an update always covers its whole rollout batch (see batch_size)."""
    seq_len: int = 256
    """Not used by grpo: rows are a prompt plus at most max_new_tokens of completion."""
    eval_every: int = 0
    """Not used by grpo (held-out accuracy is measured before and after)."""
    spike_factor: float = 3.0
    """Not used by grpo: RL losses change sign and scale by design; only non-finite
    gradients skip an update."""
    group_size: int = 8
    """G, completions sampled per prompt (DeepSeekMath: 64)."""
    prompts_per_step: int = 32
    """Prompts per rollout batch (DeepSeekMath: 16 questions × 64 = 1024 samples)."""
    max_new_tokens: int = 48
    """Completion length cap; a cut completion has no closed answer and scores 0. A 2-digit
    arithmetic scratchpad with its tags is ~31 tokens; raise this with the difficulty."""
    format_weight: float = 0.0
    """Weight of the format reward (reward = correct + format_weight · format). 0: after sft
    the format is learned (~98% of samples), and a bonus for it would only reward wrong
    answers for being well formed. Raise it for a policy that has not seen the tags."""
    scale_advantages: bool = False
    """Divide each group's advantages by its reward std (DeepSeekMath) instead of only
    subtracting the mean (Dr. GRPO; TRL's scale_rewards="none"): see dsctl.rl.objective."""
    temperature: float = 0.6
    """Sampling temperature of rollouts, the one eval's pass@1 samples at (R1 trained at 1.0:
    measured here, T = 1.0 raised accuracy at T = 1 while lowering it at 0.6 and greedy);
    log-probs are scored at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling of rollouts; 1.0 keeps the sampled policy equal to the trained one."""
    clip_eps: float = 0.2
    """ε of the clipped importance ratio (DeepSeekMath/PPO: 0.2)."""
    kl_coef: float = 0.04
    """β, weight of the k3 KL to the reference policy (DeepSeekMath: 0.04; 0 skips the reference)."""
    update_epochs: int = 1
    """μ, optimizer updates per rollout batch (DeepSeekMath: 1). With μ > 1 the ratio moves
    away from 1 and the clip starts to bite."""
    ref_refresh_every: int = 0
    """Copy the policy into the reference every this many steps (0 = keep the input
    checkpoint as reference; DeepSeekMath's iterative RL refreshed it)."""
    skip_uniform_groups: bool = True
    """Leave groups whose G rewards are all equal out of the update (with format_weight = 0:
    groups that are all right or all wrong): their advantages are 0,
    so they carry no policy gradient and would only dilute the token average (DAPO's
    dynamic-sampling observation) and cost a forward/backward."""
