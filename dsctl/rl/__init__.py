"""Reinforcement learning from verifiable rewards: GRPO (DeepSeekMath, DeepSeek-R1).

    from dsctl.rl import GRPOConfig, GRPOTrainer, group_advantages, grpo_loss, k3_kl
    trainer = GRPOTrainer(policy, reference, tokenizer, train_problems, cfg, ctx)
    summary = trainer.fit()

objective.py holds the equations, rollout.py the sampling and log-prob scoring, loop.py
the resumable training loop that ties them together. Names load on first use, so the grpo
stage's config can be imported without torch (the CLI starts fast).
"""

import importlib

_EXPORTS = {
    "GRPOConfig": "config", "GRPOTrainer": "loop",
    "LossParts": "objective", "group_advantages": "objective", "grpo_loss": "objective", "k3_kl": "objective",
    "Rollout": "rollout", "ScoringBatch": "rollout", "build_batch": "rollout", "completion_logprobs": "rollout",
    "sample_groups": "rollout", "step_problems": "rollout", "step_seed": "rollout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dsctl.rl.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dsctl.rl' has no attribute {name!r}")
