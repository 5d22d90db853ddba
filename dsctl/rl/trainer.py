"""GRPO on the training core: a step is a rollout, group advantages, then `update_epochs`
clipped-surrogate updates (each one `Trainer.update`), with optional reference refresh.

Everything else is the core's (dsctl.train.loop): precision (fp8 included), the bad-step
checks and rollback, router-bias updates, metrics, checkpoint cadence and exact resume.
The reference comes back on resume from the input checkpoint or from the refresh it was
last copied at, and each step's prompts and sampler seed are pure functions of (seed,
step), so on CPU "run N steps, kill, resume to N + M" gives bit-identical weights to
"run N + M". Every `log_completions_every` steps the sampled completions go to
scratch/completions.jsonl, cut back to the checkpoint's step on resume as metrics are.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from dsctl.rl.config import GRPOConfig
from dsctl.rl.objective import group_advantages, grpo_loss, overlong_penalty
from dsctl.rl.rollout import (
    Rollout,
    ScoringBatch,
    build_batch,
    completion_logprobs,
    sample_groups,
    step_problems,
    step_seed,
)
from dsctl.tasks import Problem
from dsctl.train.loop import RunIO, Trainer

SUMMARY_WINDOW = 5
"""Last steps averaged into the summary's training reward/accuracy."""


class GRPOTrainer(Trainer):
    description = "grpo"
    shown = ("reward_mean", "accuracy")

    def __init__(self, model: nn.Module, reference: nn.Module, tokenizer, pool: Sequence[Problem],
                 cfg: GRPOConfig, io: RunIO, *, seed: int, max_reward_errors: float = 1.0):
        if cfg.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are relative to the group), got {cfg.group_size}")
        super().__init__(model, cfg, io)
        self.tokenizer, self.pool, self.seed = tokenizer, list(pool), seed
        self.max_reward_errors = max_reward_errors
        self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.ref_dir = io.scratch / "reference"
        self.completions_path = io.scratch / "completions.jsonl"
        self.state.update(ref_step=0, rollout_tokens=0, rollout_seconds=0.0, recent=[])

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        problems = step_problems(self.pool, cfg.prompts_per_step, self.seed, step)
        started = time.perf_counter()
        ro = sample_groups(self.model, self.tokenizer, problems, group_size=cfg.group_size,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=step_seed(self.seed, step), format_weight=cfg.format_weight,
                           max_reward_errors=self.max_reward_errors)
        self.state["rollout_tokens"] += ro.n_tokens
        self.state["rollout_seconds"] += ro.seconds
        lengths = torch.tensor([len(c) for c in ro.completion_ids])
        penalty = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
        rewards = ro.rewards + penalty
        advantages = group_advantages(rewards, cfg.group_size, scale=cfg.scale_advantages)
        groups = rewards.view(-1, cfg.group_size)
        has_signal = groups.max(-1).values > groups.min(-1).values
        solved = ro.correct.view(-1, cfg.group_size).max(-1).values > 0
        keep = (has_signal.repeat_interleave(cfg.group_size) if cfg.skip_uniform_groups
                else torch.ones_like(advantages, dtype=torch.bool))
        metrics = {"step": step + 1, **rollout_metrics(ro),
                   "groups_with_signal": round(float(has_signal.float().mean()), 4),
                   "groups_solved": round(float(solved.float().mean()), 4), "lr": self.optimizer.param_groups[0]["lr"]}
        if cfg.overlong_buffer:
            metrics["overlong_penalty"] = round(float(penalty.mean()), 4)
        if cfg.mask_truncated:
            # out of the loss only: their rewards still set their group's mean (DAPO masks
            # the loss of overlong samples, not their place in the group)
            masked = keep & (ro.truncated > 0)
            keep = keep & ~masked
            metrics["masked_truncated"] = int(masked.sum())
        every = cfg.log_completions_every
        if every and (step % every == 0 or step + 1 == cfg.max_steps):
            with open(self.completions_path, "a") as fh:
                fh.writelines(json.dumps(row) + "\n" for row in completion_rows(step + 1, ro, rewards, penalty, cfg))
        if not bool(keep.any()):
            metrics["event"] = "no_signal"  # every group uniform (or every row masked): nothing to learn from
        else:
            rows = keep.nonzero().squeeze(-1).tolist()
            batch = build_batch([ro.prompt_ids[i] for i in rows], [ro.completion_ids[i] for i in rows],
                                self.tokenizer.pad_id)
            metrics.update(self._updates(batch, advantages[keep], step))
        metrics["step_seconds"] = round(time.perf_counter() - started, 3)
        return metrics

    def _updates(self, batch: ScoringBatch, advantages: torch.Tensor, step: int) -> dict[str, Any]:
        """μ updates on one rollout batch; returns the last update's metrics.

        The batch is cut into micro-batches of `batch_size` rows whose gradients add up to
        the whole batch's (normalized by the whole batch's tokens or rows)."""
        cfg, model = self.cfg, self.model
        spans = [(lo, min(lo + cfg.batch_size, len(advantages))) for lo in range(0, len(advantages), cfg.batch_size)]
        n_tokens = float(batch.completion_mask.sum())
        advantages = advantages.to(self.device)
        ref_logp: list[torch.Tensor | None] = [None] * len(spans)
        if cfg.kl_coef > 0:
            with torch.no_grad(), self.autocast():
                ref_logp = [completion_logprobs(self.reference, batch.rows(lo, hi), cfg.temperature)[0]
                            for lo, hi in spans]
        old_logp: list[torch.Tensor] = []
        out: dict[str, Any] = {}
        model.train()
        for epoch in range(cfg.update_epochs):
            totals = dict.fromkeys(("loss", "policy_loss", "kl", "clip_fraction", "ratio_mean", "balance_loss"), 0.0)
            for i, (lo, hi) in enumerate(spans):
                micro = batch.rows(lo, hi)
                with self.autocast():
                    logp, balance = completion_logprobs(model, micro, cfg.temperature)
                # The first update runs on the very weights that sampled the batch, so its own
                # (detached) log-probs are the old policy's: no extra scoring pass needed.
                if epoch == 0:
                    old_logp.append(logp.detach())
                parts = grpo_loss(logp, old_logp[i], ref_logp[i], advantages[lo:hi],
                                  micro.completion_mask.to(self.device), cfg.clip_eps, cfg.kl_coef,
                                  n_tokens=n_tokens, clip_eps_high=cfg.clip_eps_high,
                                  aggregation=cfg.loss_aggregation, n_sequences=len(advantages))
                balance = balance * (hi - lo) / len(advantages)
                (parts.loss + balance).backward()
                for key, value in (("loss", float(parts.loss.detach())), ("policy_loss", parts.policy_loss),
                                   ("kl", parts.kl), ("clip_fraction", parts.clip_fraction),
                                   ("ratio_mean", parts.ratio_mean), ("balance_loss", float(balance.detach()))):
                    totals[key] += value
            out = {k: round(v, 6) for k, v in totals.items()}
            out.update(self.update(step, totals["loss"]), update_tokens=int(n_tokens))
            self.state["tokens"] += int(n_tokens)
        return out

    def after_step(self, metrics: dict[str, Any]) -> None:
        self.state["recent"] = (self.state["recent"] + [
            {k: metrics[k] for k in ("reward_mean", "accuracy", "format_rate", "groups_solved")}])[-SUMMARY_WINDOW:]
        every = self.cfg.ref_refresh_every
        if every and self.state["step"] % every == 0:
            self._refresh_reference()
            metrics["reference_refreshed"] = True

    def _resume(self) -> None:
        super()._resume()
        # The steps after the checkpoint are sampled again: drop their rows (all of them when
        # there is no checkpoint), so the file ends as an uninterrupted run's would.
        keep_rows_through(self.completions_path, self.state["step"])

    # -- reference ----------------------------------------------------------------------------
    def _ref_path(self, step: int) -> Path:
        return self.ref_dir / f"step-{step:07d}.safetensors"

    def _refresh_reference(self) -> None:
        """Copy the policy into the reference, and keep the copy on disk for resume (the
        write lands before any checkpoint that names it)."""
        self.reference.load_state_dict(self.model.state_dict())
        self.ref_dir.mkdir(parents=True, exist_ok=True)
        path = self._ref_path(self.state["step"])
        tmp = path.with_name(path.name + ".tmp")
        save_model(self.reference, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.state["ref_step"] = self.state["step"]

    def resumed(self) -> None:
        if self.state["ref_step"]:
            load_model(self.reference, str(self._ref_path(self.state["ref_step"])), strict=True)

    def summary(self) -> dict[str, Any]:
        recent = self.state["recent"]
        mean = lambda key: round(sum(r[key] for r in recent) / max(len(recent), 1), 4)  # noqa: E731
        return {
            **super().summary(),
            "train_reward_last": mean("reward_mean"), "train_accuracy_last": mean("accuracy"),
            "train_format_rate_last": mean("format_rate"), "train_groups_solved_last": mean("groups_solved"),
            "rollout_tokens": self.state["rollout_tokens"],
            "rollout_tokens_per_s": round(self.state["rollout_tokens"] / max(self.state["rollout_seconds"], 1e-9), 1),
        }


def rollout_metrics(ro: Rollout) -> dict[str, float]:
    """What one rollout batch says about the policy before it is updated."""
    lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float32)
    return {
        "reward_mean": round(float(ro.rewards.mean()), 4),
        "reward_std": round(float(ro.rewards.std(unbiased=False)), 4),
        "accuracy": round(float(ro.correct.mean()), 4),
        "format_rate": round(float(ro.formatted.mean()), 4),
        "completion_len": round(float(lengths.mean()), 2),
        "truncated_rate": round(float(ro.truncated.mean()), 4),
        "reward_error_rate": round(ro.reasons.count("error") / max(len(ro.reasons), 1), 4),
        "rollout_tokens_per_s": round(ro.n_tokens / max(ro.seconds, 1e-9), 1),
    }


def completion_rows(step: int, ro: Rollout, rewards: torch.Tensor, penalty: torch.Tensor,
                    cfg: GRPOConfig) -> list[dict[str, Any]]:
    """One completions.jsonl row per sampled completion of step `step` (1-based, as in
    metrics). `reward` is the one advantages were computed from (overlong penalty included)."""
    reasons = getattr(ro, "reasons", None)  # the verifier's why, where the Rollout has it
    rows = []
    for i, problem in enumerate(ro.problems):
        row = {"step": step, "problem_id": problem.id, "prompt": problem.prompt, "completion": ro.texts[i],
               "reward": round(float(rewards[i]), 4), "correct": bool(ro.correct[i]),
               "truncated": bool(ro.truncated[i]), "tokens": len(ro.completion_ids[i])}
        if cfg.overlong_buffer:
            row["overlong_penalty"] = round(float(penalty[i]), 4)
        if reasons is not None:
            row["reason"] = reasons[i]
        rows.append(row)
    return rows


def keep_rows_through(path: Path, step: int) -> None:
    """Drop the rows of a step-keyed JSONL written after step `step`, and a last line cut
    short by a kill mid-write."""
    if not path.exists():
        return

    def step_of(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except ValueError:
            return float("inf")

    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and step_of(line) <= step]
    if len(kept) != len(lines):
        path.write_text("".join(kept))
