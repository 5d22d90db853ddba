"""Reinforcement learning from verifiable rewards: GRPO (DeepSeekMath, DeepSeek-R1).

    config.py     GRPOConfig
    objective.py  the equations: group advantages, clipped surrogate, k3 KL
    rollout.py    prompt choice, group sampling, log-prob scoring
    trainer.py    GRPOTrainer, a rollout-and-update step on the training core

    trainer = GRPOTrainer(policy, reference, tokenizer, train_problems, cfg, ctx, seed=0)
    summary = trainer.fit()

This package imports nothing, so the grpo stage's config loads without torch.
"""
