"""The training loop: flat and visible, one optimizer step per iteration.

Each step: learning rate from the schedule -> `grad_accum` micro-batches forward/backward
-> clip -> a NaN/inf or spike check (bad steps are skipped, repeated bad steps roll back
to the last checkpoint) -> AdamW step -> MoE router-bias update (auxiliary-loss-free
balancing) -> metrics -> periodic validation and checkpoint.

How a step computes its loss and gradients is a `StepStrategy`: one process by default;
data parallel and DualPipe/1F1B in `dsctl.train.distributed` (which also decide how the
ranks agree on the clip norm, MoE load counts and who writes checkpoints).

Resume is exact: the loop state, optimizer, RNG and weights come back from the newest
checkpoint and batches are a pure function of the step, so on CPU "train N, kill, resume
to N+M" gives bit-identical weights to "train N+M".
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any, Callable, Protocol

import torch
from torch import nn

from dsctl.stage import StageContext
from dsctl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dsctl.train.config import TrainConfig
from dsctl.train.optim import build_optimizer, lr_at

SPIKE_WINDOW = 20
"""Good steps whose mean loss is the reference for spike detection."""


class BatchSource(Protocol):
    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]: ...


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], Any]
"""(model, batch) -> an object with .loss (to backprop) and optionally .lm_loss,
.mtp_loss, .balance_loss, .n_tokens (see dsctl.model.LossOutput)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_loss(cfg: TrainConfig) -> LossFn:
    from dsctl.model import compute_loss

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        doc_ids = batch.get("doc_ids") if cfg.doc_masking else None
        return compute_loss(model, batch["input_ids"], batch["labels"], doc_ids=doc_ids)

    return loss_fn


class StepStrategy:
    """How one optimizer step computes its loss and gradients: here, one process running
    `grad_accum` micro-batches. `dsctl.train.distributed` swaps in data-parallel and
    pipeline versions; the loop around them (lr, bad-step checks, optimizer, router
    biases, metrics, validation, checkpoints) stays the same."""

    def bind(self, trainer: "Trainer") -> None:
        """Called once the trainer has placed the model (after any fp8 conversion)."""

    def forward_backward(self, trainer: "Trainer", step: int) -> tuple[dict[str, float], int]:
        """Accumulate the step's gradients; returns (mean losses by name, tokens seen)."""
        return self.run_micro_batches(trainer, step, range(trainer.cfg.grad_accum))

    def run_micro_batches(self, trainer: "Trainer", step: int, micros) -> tuple[dict[str, float], int]:
        """Forward/backward micro-batches `micros` of `step`, each loss weighted 1/len(micros)."""
        totals = {"loss": 0.0, "lm_loss": 0.0, "mtp_loss": 0.0, "balance_loss": 0.0}
        tokens, count = 0, len(micros)
        for micro in micros:
            batch = {k: v.to(trainer.device) for k, v in trainer.batches.batch(step, micro).items()}
            with trainer._autocast():
                out = trainer.loss_fn(trainer.model, batch)
            (out.loss / count).backward()
            for key in totals:
                value = getattr(out, key, None)
                if value is not None:
                    totals[key] += float(value.detach() if torch.is_tensor(value) else value) / count
            tokens += int(batch["input_ids"].numel())
        return totals, tokens

    def clip_grad_norm(self, trainer: "Trainer", max_norm: float) -> float:
        """Clip to `max_norm` (inf = measure only); returns the norm before clipping."""
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def sync_router_load(self, model: nn.Module) -> None:
        """Make every replica's MoE load counts the step's global counts (before a bias update)."""

    def sync_model(self, trainer: "Trainer") -> None:
        """Make this process's model and optimizer whole (before validation or a checkpoint)."""

    def save_checkpoint(self, trainer: "Trainer") -> None:
        save_checkpoint(trainer.ckpt_dir, trainer.model, trainer.optimizer, trainer.state)


class Trainer:
    def __init__(self, model: nn.Module, batches: BatchSource, cfg: TrainConfig, ctx: StageContext, *,
                 val_batches: BatchSource | None = None, loss_fn: LossFn | None = None,
                 strategy: StepStrategy | None = None):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.ctx, self.batches, self.val_batches = cfg, ctx, batches, val_batches
        self.device = resolve_device(cfg.device)
        self.precision = cfg.precision if cfg.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        if self.precision == "fp8":
            from dsctl.fp8 import convert_to_fp8

            converted = convert_to_fp8(model, min_features=cfg.fp8_min_features)
            ctx.info(f"fp8: {converted} Linear layers run through fine-grained FP8")
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.loss_fn = loss_fn or default_loss(cfg)
        self.ckpt_dir = ctx.scratch / "checkpoints"
        self.state: dict[str, Any] = {"step": 0, "tokens": 0, "skipped": 0, "rollbacks": 0,
                                      "consecutive_bad": 0, "recent_losses": [], "val_loss": None}
        self.strategy = strategy or StepStrategy()
        self.strategy.bind(self)

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._resume()
        with self.ctx.progress(cfg.max_steps, "train", unit="step", completed=self.state["step"]) as bar:
            while self.state["step"] < cfg.max_steps:
                step = self.state["step"]
                metrics = self._step(step)
                self.state["step"] = step + 1
                self.state["last_loss"] = metrics["lm_loss"]
                done = self.state["step"] == cfg.max_steps
                validate = self.val_batches is not None and ((cfg.eval_every and self.state["step"] % cfg.eval_every == 0) or done)
                checkpoint = self.state["step"] % cfg.checkpoint_every == 0 or done
                if validate or checkpoint:
                    self.strategy.sync_model(self)
                if validate:
                    metrics["val_loss"] = self.state["val_loss"] = self.validation_loss()
                if step % cfg.log_every == 0 or done or "val_loss" in metrics or "event" in metrics:
                    self.ctx.log(**metrics)
                if checkpoint:
                    self.strategy.save_checkpoint(self)
                bar.advance(1, loss=metrics["loss"], lr=metrics["lr"])
        return self._summary()

    def _autocast(self):
        if self.device.type == "cuda" and self.precision in ("bf16", "fp8"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step(self, step: int) -> dict[str, Any]:
        cfg, model = self.cfg, self.model
        started = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model.train()
        totals, tokens = self.strategy.forward_backward(self, step)
        grad_norm = self.strategy.clip_grad_norm(self, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        metrics: dict[str, Any] = {"step": step + 1, **{k: round(v, 6) for k, v in totals.items()},
                                   "lr": lr, "grad_norm": round(grad_norm, 6)}
        problem = self._problem(totals["loss"], grad_norm)
        if problem:
            self._skip(step, problem, metrics)
        else:
            self.optimizer.step()
            self.state["consecutive_bad"] = 0
            recent = self.state["recent_losses"]
            recent.append(totals["loss"])
            del recent[:-SPIKE_WINDOW]
            if hasattr(model, "update_router_biases"):
                self.strategy.sync_router_load(model)
                metrics.update({k: round(v, 4) for k, v in
                                model.update_router_biases(speed=self.cfg.router_bias_speed).items()})
        self.optimizer.zero_grad(set_to_none=True)
        self.state["tokens"] += tokens
        elapsed = time.perf_counter() - started
        metrics["tokens_per_s"] = round(tokens / max(elapsed, 1e-9), 1)
        return metrics

    def _problem(self, loss: float, grad_norm: float) -> str:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        recent = self.state["recent_losses"]
        if len(recent) >= SPIKE_WINDOW // 2 and loss > self.cfg.spike_factor * (sum(recent) / len(recent)):
            return f"loss spike: {loss:.4g} > {self.cfg.spike_factor} × recent mean {sum(recent) / len(recent):.4g}"
        return ""

    def _skip(self, step: int, problem: str, metrics: dict[str, Any]) -> None:
        """Never train through a bad step: drop its gradients; after several, roll back."""
        self.state["skipped"] += 1
        self.state["consecutive_bad"] += 1
        metrics["event"] = "skipped"
        metrics["reason"] = problem
        if hasattr(self.model, "update_router_biases"):
            self.model.update_router_biases(speed=0.0)  # forget this step's load counts
        self.ctx.warn(f"step {step + 1}: {problem}; step skipped")
        checkpoint = latest_checkpoint(self.ckpt_dir)
        if self.state["consecutive_bad"] >= self.cfg.max_bad_steps and checkpoint is not None:
            saved = load_checkpoint(checkpoint, self.model, self.optimizer)
            self.state["rollbacks"] += 1
            self.state["consecutive_bad"] = 0
            self.state["recent_losses"] = saved["recent_losses"]
            metrics["event"] = "rollback"
            # Keep the step counter: the data moves on past the batches that went bad.
            self.ctx.warn(f"{self.cfg.max_bad_steps} bad steps in a row: rolled back weights to {checkpoint.name}")

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.model.eval()
        losses = []
        for i in range(self.cfg.eval_batches):
            batch = {k: v.to(self.device) for k, v in self.val_batches.batch(i).items()}
            with self._autocast():
                out = self.loss_fn(self.model, batch)
            losses.append(float(getattr(out, "lm_loss", out.loss)))
        if hasattr(self.model, "update_router_biases"):
            self.model.update_router_biases(speed=0.0)  # validation must not steer routing
        self.model.train()
        return round(sum(losses) / len(losses), 6)

    # -- resume -----------------------------------------------------------------------------
    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.ckpt_dir)
        if checkpoint is None:
            self.ctx.metrics_path.unlink(missing_ok=True)
            return
        self.state = load_checkpoint(checkpoint, self.model, self.optimizer)
        step = self.state["step"]
        self.ctx.info(f"resumed from {checkpoint.name} (step {step}/{self.cfg.max_steps})")
        if self.ctx.metrics_path.exists():  # drop records of steps the checkpoint does not hold
            kept = [line for line in self.ctx.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            self.ctx.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if self.state.get("val_loss") is not None:
            summary["val_loss"] = self.state["val_loss"]
        summary.update({
            "train_loss": self.state.get("last_loss"),
            "steps": self.state["step"], "tokens": self.state["tokens"],
            "skipped_steps": self.state["skipped"], "rollbacks": self.state["rollbacks"],
            "precision": self.precision, "device": self.device.type,
        })
        return summary
