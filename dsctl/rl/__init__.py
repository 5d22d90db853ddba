"""Reinforcement learning from verifiable rewards: GRPO (DeepSeekMath, DeepSeek-R1).

    from dsctl.rl import GRPOConfig, GRPOTrainer, group_advantages, grpo_loss, k3_kl
    trainer = GRPOTrainer(policy, reference, tokenizer, train_problems, cfg, ctx)
    summary = trainer.fit()

objective.py holds the equations, rollout.py the sampling and log-prob scoring, loop.py
the resumable training loop that ties them together.
"""

from dsctl.rl.config import GRPOConfig
from dsctl.rl.loop import GRPOTrainer
from dsctl.rl.objective import LossParts, group_advantages, grpo_loss, k3_kl
from dsctl.rl.rollout import Rollout, ScoringBatch, build_batch, completion_logprobs, rollout, step_problems, step_seed

__all__ = [
    "GRPOConfig", "GRPOTrainer", "LossParts", "Rollout", "ScoringBatch", "build_batch", "completion_logprobs",
    "group_advantages", "grpo_loss", "k3_kl", "rollout", "step_problems", "step_seed",
]
