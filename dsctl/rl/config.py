"""GRPO hyper-parameters. Where each default comes from:

DeepSeekMath (Shao et al. 2024, §4.2) trained its 7B model with G = 64 samples per
question, lr 1e-6, β = 0.04, batch 1024 (16 questions), one update per rollout (μ = 1) and
ε = 0.2 (PPO's default, which their GRPO objective inherits). DeepSeek-R1 (2025) uses the
same objective with rule-based accuracy + format rewards. Those numbers fit a 7B model
that already solves many problems and weeks of GPU time; the CPU recipe has a ~6M-parameter
SFT'd model and ~3 minutes on 2 cores, so the defaults below keep the algorithm and scale
the budget: G = 8 (enough spread within a group for a non-zero advantage on most
prompts), 4 prompts per step, completions capped just above the longest worked solution,
and a far larger learning rate: a ~6M model fine-tuned at 3e-3 barely moves in tens of
steps at 1e-6. ε = 0.2, β = 0.04 and μ = 1 keep the papers' values.

Measured (small preset, 2 CPU cores; see stages/grpo.py): lr 1e-4 raised held-out greedy
accuracy on 1-digit arithmetic from 1/24 to 5/24 and format rate from 0.50 to 1.00 in 20
steps; lr 2e-4 on 1–2-digit problems let the k3 KL climb to ~0.3 with no accuracy gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsctl.train.config import TrainConfig


@dataclass
class GRPOConfig(TrainConfig):
    max_steps: int = 20
    """GRPO steps; each step = one rollout batch and `update_epochs` optimizer updates."""
    lr: float = 1e-4
    """Peak AdamW learning rate (DeepSeekMath: 1e-6 for 7B; raised for a ~6M model on CPU)."""
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
    prompts_per_step: int = 4
    """Prompts per rollout batch (DeepSeekMath: 16 questions × 64 = 1024 samples)."""
    max_new_tokens: int = 64
    """Completion length cap; a cut completion has no closed answer and scores 0. The
    worked solutions of 1-digit arithmetic fit in ~50 tokens with the recipe tokenizer
    (2-digit ones need ~90: raise this with the difficulty)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (R1: 1.0); log-probs are scored at the same temperature."""
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
    """Leave groups whose G rewards are all equal out of the update: their advantages are 0,
    so they carry no policy gradient and would only dilute the token average (DAPO's
    dynamic-sampling observation) and cost a forward/backward."""
