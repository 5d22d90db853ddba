"""The GRPO loop: rollout -> group advantages -> μ clipped-surrogate updates -> router-bias
update -> metrics -> periodic checkpoint (and optional reference refresh).

Resume is exact, like the pretraining loop's: weights, AdamW moments, router biases and
the loop state come back from the newest checkpoint, the reference comes back from the
input checkpoint or from the refresh it was last copied at, and each step's prompts and
sampler seed are pure functions of (seed, step). On CPU, "run N steps, kill, resume to
N + M" gives bit-identical weights to "run N + M".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dsctl.rl.config import GRPOConfig
from dsctl.rl.objective import group_advantages, grpo_loss
from dsctl.rl.rollout import Rollout, ScoringBatch, build_batch, completion_logprobs, sample_groups, step_problems, step_seed
from dsctl.stage import StageContext
from dsctl.tasks import Problem
from dsctl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dsctl.train.loop import resolve_device
from dsctl.train.optim import build_optimizer, lr_at

SUMMARY_WINDOW = 5
"""Last steps averaged into the summary's training reward/accuracy."""


class GRPOTrainer:
    def __init__(self, model: nn.Module, reference: nn.Module, tokenizer, pool: Sequence[Problem],
                 cfg: GRPOConfig, ctx: StageContext):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are relative to the group), got {cfg.group_size}")
        self.cfg, self.ctx, self.tokenizer, self.pool = cfg, ctx, tokenizer, list(pool)
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.optimizer = build_optimizer(self.model, cfg)
        self.ckpt_dir = ctx.scratch / "checkpoints"
        self.ref_dir = ctx.scratch / "reference"
        self.state: dict[str, Any] = {"step": 0, "ref_step": 0, "skipped": 0, "rollout_tokens": 0,
                                      "rollout_seconds": 0.0, "recent": []}

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._resume()
        with self.ctx.progress(cfg.max_steps, "grpo", unit="step", completed=self.state["step"]) as bar:
            while self.state["step"] < cfg.max_steps:
                step = self.state["step"]
                metrics = self._step(step)
                self.state["step"] = step + 1
                self.state["recent"] = (self.state["recent"] + [
                    {k: metrics[k] for k in ("reward_mean", "accuracy", "format_rate", "groups_solved")}])[-SUMMARY_WINDOW:]
                if cfg.ref_refresh_every and self.state["step"] % cfg.ref_refresh_every == 0:
                    self._refresh_reference()
                    metrics["reference_refreshed"] = True
                self.ctx.log(**metrics)
                if self.state["step"] % cfg.checkpoint_every == 0 or self.state["step"] == cfg.max_steps:
                    save_checkpoint(self.ckpt_dir, self.model, self.optimizer, self.state)
                bar.advance(1, reward=metrics["reward_mean"], acc=metrics["accuracy"])
        return self._summary()

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.precision in ("auto", "bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        problems = step_problems(self.pool, cfg.prompts_per_step, self.ctx.seed, step)
        started = time.perf_counter()
        ro = sample_groups(self.model, self.tokenizer, problems, group_size=cfg.group_size,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=step_seed(self.ctx.seed, step), format_weight=cfg.format_weight)
        self.state["rollout_tokens"] += ro.n_tokens
        self.state["rollout_seconds"] += ro.seconds
        advantages = group_advantages(ro.rewards, cfg.group_size, scale=cfg.scale_advantages)
        groups = ro.rewards.view(-1, cfg.group_size)
        has_signal = groups.max(-1).values > groups.min(-1).values
        solved = ro.correct.view(-1, cfg.group_size).max(-1).values > 0
        keep = has_signal.repeat_interleave(cfg.group_size) if cfg.skip_uniform_groups else torch.ones_like(advantages, dtype=torch.bool)
        lr = lr_at(step, cfg)
        metrics = {"step": step + 1, **rollout_metrics(ro), "groups_with_signal": round(float(has_signal.float().mean()), 4),
                   "groups_solved": round(float(solved.float().mean()), 4), "lr": lr}
        if not bool(keep.any()):
            metrics["event"] = "no_signal"  # every group uniform: nothing to learn from this batch
        else:
            rows = keep.nonzero().squeeze(-1).tolist()
            batch = build_batch([ro.prompt_ids[i] for i in rows], [ro.completion_ids[i] for i in rows],
                                self.tokenizer.pad_id)
            metrics.update(self._update(batch, advantages[keep], lr, step))
        metrics["step_seconds"] = round(time.perf_counter() - started, 3)
        return metrics

    def _update(self, batch: ScoringBatch, advantages: torch.Tensor, lr: float, step: int) -> dict[str, Any]:
        """μ optimizer updates on one rollout batch; returns the last update's metrics.

        The batch is cut into micro-batches of `batch_size` rows whose gradients add up to
        the whole batch's (token-level normalization over the whole batch)."""
        cfg, model = self.cfg, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        spans = [(lo, min(lo + cfg.batch_size, len(advantages))) for lo in range(0, len(advantages), cfg.batch_size)]
        n_tokens = float(batch.completion_mask.sum())
        advantages = advantages.to(self.device)
        ref_logp: list[torch.Tensor | None] = [None] * len(spans)
        if cfg.kl_coef > 0:
            with torch.no_grad(), self._autocast():
                ref_logp = [completion_logprobs(self.reference, batch.rows(lo, hi), cfg.temperature)[0] for lo, hi in spans]
        old_logp: list[torch.Tensor] = []
        out: dict[str, Any] = {}
        model.train()
        for epoch in range(cfg.update_epochs):
            totals = dict.fromkeys(("loss", "policy_loss", "kl", "clip_fraction", "ratio_mean", "balance_loss"), 0.0)
            for i, (lo, hi) in enumerate(spans):
                micro = batch.rows(lo, hi)
                with self._autocast():
                    logp, balance = completion_logprobs(model, micro, cfg.temperature)
                # The first update runs on the very weights that sampled the batch, so its own
                # (detached) log-probs are the old policy's: no extra scoring pass needed.
                if epoch == 0:
                    old_logp.append(logp.detach())
                parts = grpo_loss(logp, old_logp[i], ref_logp[i], advantages[lo:hi], micro.completion_mask.to(self.device),
                                  cfg.clip_eps, cfg.kl_coef, n_tokens=n_tokens)
                balance = balance * (hi - lo) / len(advantages)
                (parts.loss + balance).backward()
                for key, value in (("loss", float(parts.loss.detach())), ("policy_loss", parts.policy_loss), ("kl", parts.kl),
                                   ("clip_fraction", parts.clip_fraction), ("ratio_mean", parts.ratio_mean),
                                   ("balance_loss", float(balance.detach()))):
                    totals[key] += value
            out = {k: round(v, 6) for k, v in totals.items()}
            out.update(self._optimizer_step(step, epoch), update_tokens=int(n_tokens))
        return out

    def _optimizer_step(self, step: int, epoch: int) -> dict[str, Any]:
        """Clip, step (unless the gradient is not finite), move router biases, zero grads."""
        cfg, model = self.cfg, self.model
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        out: dict[str, Any] = {"grad_norm": round(grad_norm, 5)}
        if math.isfinite(grad_norm):
            self.optimizer.step()
            out.update({k: round(v, 4) for k, v in model.update_router_biases(speed=cfg.router_bias_speed).items()})
        else:  # never step on a NaN/inf: drop this update's gradients and load counts
            self.state["skipped"] += 1
            model.update_router_biases(speed=0.0)
            out["event"] = "skipped"
            self.ctx.warn(f"step {step + 1} update {epoch + 1}: non-finite gradient; update skipped")
        self.optimizer.zero_grad(set_to_none=True)
        return out

    # -- reference -------------------------------------------------------------------------
    def _ref_path(self, step: int) -> Path:
        return self.ref_dir / f"step-{step:07d}.safetensors"

    def _refresh_reference(self) -> None:
        """Copy the policy into the reference, and keep the copy on disk for resume (the
        write lands before any checkpoint that names it)."""
        from safetensors.torch import save_model

        self.reference.load_state_dict(self.model.state_dict())
        self.ref_dir.mkdir(parents=True, exist_ok=True)
        path = self._ref_path(self.state["step"])
        tmp = path.with_name(path.name + ".tmp")
        save_model(self.reference, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.state["ref_step"] = self.state["step"]

    # -- resume -----------------------------------------------------------------------------
    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.ckpt_dir)
        if checkpoint is None:
            self.ctx.metrics_path.unlink(missing_ok=True)
            return
        self.state = load_checkpoint(checkpoint, self.model, self.optimizer)
        step = self.state["step"]
        if self.state["ref_step"]:
            from safetensors.torch import load_model

            load_model(self.reference, str(self._ref_path(self.state["ref_step"])), strict=True)
        self.ctx.info(f"resumed from {checkpoint.name} (step {step}/{self.cfg.max_steps})")
        if self.ctx.metrics_path.exists():  # drop records of steps the checkpoint does not hold
            kept = [line for line in self.ctx.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            self.ctx.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _summary(self) -> dict[str, Any]:
        recent = self.state["recent"]
        mean = lambda key: round(sum(r[key] for r in recent) / max(len(recent), 1), 4)  # noqa: E731
        return {
            "steps": self.state["step"], "skipped_updates": self.state["skipped"],
            "train_reward_last": mean("reward_mean"), "train_accuracy_last": mean("accuracy"),
            "train_format_rate_last": mean("format_rate"), "train_groups_solved_last": mean("groups_solved"),
            "rollout_tokens": self.state["rollout_tokens"],
            "rollout_tokens_per_s": round(self.state["rollout_tokens"] / max(self.state["rollout_seconds"], 1e-9), 1),
            "device": self.device.type,
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
        "rollout_tokens_per_s": round(ro.n_tokens / max(ro.seconds, 1e-9), 1),
    }
