"""GRPO's hyper-parameters: the training core's pieces plus the algorithm's own.

DeepSeekMath (Shao et al. 2024, §4.2) trained its 7B model with G = 64 samples per
question, lr 1e-6, β = 0.04, 16 questions per step, one update per rollout (μ = 1) and
ε = 0.2; DeepSeek-R1 keeps the objective with rule-based rewards. The defaults keep the
algorithm and scale the budget to a few-million-parameter model on a CPU (README, "What
each stage is for", has the measurements behind them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from dsctl.configs import stage_defaults
from dsctl.tasks.config import SamplingConfig
from dsctl.train.config import TrainConfig

LossAggregation = Literal["token", "sequence"]
"""dsctl.rl.objective.LOSS_AGGREGATIONS, spelled here too: this module must load without torch."""


@dataclass
@stage_defaults(
    max_steps=20,
    # raised from DeepSeekMath's 1e-6 for a small model; 1e-4 lost accuracy (Adam's
    # full-size steps on a sparse 0/1 signal)
    lr=5e-5,
    batch_size=32,  # rows of a rollout batch per forward/backward; bounds memory only
    warmup_steps=0,  # the policy starts from an sft model: nothing to warm
    schedule="constant",  # as DeepSeekMath's RL
    weight_decay=0.0,  # few steps, and the KL term anchors the weights
    checkpoint_every=10,
    # rollouts at eval's temperature (log-probs are scored at the same one); top-p 1.0
    # keeps the sampled policy equal to the trained one; 48 tokens clear the longest
    # 2-digit scratchpad
    temperature=0.6,
    top_p=1.0,
    max_new_tokens=48,
)
class GRPOConfig(SamplingConfig, TrainConfig):
    group_size: int = 8
    """G, completions sampled per prompt (DeepSeekMath: 64)."""
    prompts_per_step: int = 32
    """Prompts per rollout batch (DeepSeekMath: 16 questions × 64 = 1024 samples)."""
    format_weight: float = 0.0
    """Weight of the format reward (reward = correct + format_weight · format). 0: after sft
    the format is learned (~98% of samples), and a bonus for it would only reward wrong
    answers for being well formed. Raise it for a policy that has not seen the tags."""
    scale_advantages: bool = False
    """Divide each group's advantages by its reward std (DeepSeekMath) instead of only
    subtracting the mean (Dr. GRPO; TRL's scale_rewards="none"): see dsctl.rl.objective."""
    clip_eps: float = 0.2
    """ε of the clipped importance ratio (DeepSeekMath/PPO: 0.2); with clip_eps_high set,
    the lower bound ε_low alone: clip(ratio, 1 − clip_eps, 1 + clip_eps_high)."""
    clip_eps_high: float = 0.0
    """ε_high, the upper bound of the clipped ratio (DAPO's clip-higher: 0.28 beside
    clip_eps = 0.2; TRL's epsilon_high). 0 = clip_eps, the symmetric clip."""
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
    groups that are all right or all wrong): their advantages are 0, so they carry no
    policy gradient and would only dilute the token average (DAPO's dynamic-sampling
    observation) and cost a forward/backward."""
    mask_truncated: bool = False
    """Leave completions cut by max_new_tokens out of the loss (DAPO's overlong filtering):
    a cut completion is scored as wrong although its reasoning may be sound, and that
    noise would train against long reasoning. They still count in the group's advantages
    and in the rollout metrics."""
    overlong_buffer: int = 0
    """L_cache of DAPO's soft overlong penalty: completions longer than max_new_tokens −
    overlong_buffer tokens lose reward linearly up to −overlong_penalty at max_new_tokens
    (dsctl.rl.objective.overlong_penalty). 0 = off (DAPO: 4096 of 20480)."""
    overlong_penalty: float = 1.0
    """The penalty factor of the soft overlong penalty: the reward lost at max_new_tokens."""
    loss_aggregation: LossAggregation = "token"
    """How the loss averages its per-token terms: "token" = over all completion tokens of
    the batch (DAPO, Dr. GRPO); "sequence" = over each completion's tokens, then over
    completions (DeepSeekMath's original GRPO). See dsctl.rl.objective."""
    log_completions_every: int = 10
    """Every this many steps (and the first and last), append the step's sampled
    completions with their rewards to completions.jsonl, which the stage publishes beside
    the checkpoint (0 = off)."""

    def __post_init__(self) -> None:
        # build_config checks the Literal for recipes; this also covers configs built in code
        if self.loss_aggregation not in get_args(LossAggregation):
            raise ValueError(f"loss_aggregation must be one of {', '.join(map(repr, get_args(LossAggregation)))}, "
                             f"got {self.loss_aggregation!r}")
        if self.clip_eps_high < 0:
            raise ValueError(f"clip_eps_high must be >= 0 (0 = clip_eps), got {self.clip_eps_high}")
        if not 0 <= self.overlong_buffer <= self.max_new_tokens:
            raise ValueError(f"overlong_buffer must be in [0, max_new_tokens = {self.max_new_tokens}], "
                             f"got {self.overlong_buffer}")
        if self.log_completions_every < 0:
            raise ValueError(f"log_completions_every must be >= 0 (0 = off), got {self.log_completions_every}")
