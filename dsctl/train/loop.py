"""The training core behind every training stage, and its language-model step.

`Trainer` owns what every training run shares, written once: the step loop and its
progress, the learning rate, precision (fp8 conversion, bf16 autocast), the optimizer
update with gradient clipping, the bad-step checks (non-finite loss or gradient, loss
spikes: the step is skipped, repeated bad steps roll back to the last checkpoint), the
MoE router-bias update (auxiliary-loss-free balancing), metrics records, checkpoint
cadence and exact resume. A subclass says what one step is:

    LMTrainer     pretrain, extend, sft, distill: `grad_accum` micro-batches of a packed
                  language-model loss, then one update; periodic validation loss
    GRPOTrainer   grpo (dsctl.rl.trainer): a rollout, then `update_epochs` updates

How a step's gradients are computed and agreed across processes is a `StepStrategy`: one
process by default; data parallel and DualPipe/1F1B in `dsctl.train.strategies`.

Resume is exact: the loop state, optimizer, RNG and weights come back from the newest
checkpoint and batches are a pure function of the step, so on CPU "train N, kill, resume
to N+M" gives bit-identical weights to "train N+M".
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

import torch
from torch import nn

from dsctl.model import compute_loss
from dsctl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dsctl.train.config import ComputeConfig, LMTrainConfig, TrainConfig
from dsctl.train.optim import build_optimizer, lr_at

SPIKE_WINDOW = 20
"""Good steps whose mean loss is the reference for spike detection."""


class RunIO(Protocol):
    """What the training core needs from whoever runs it: a scratch directory for
    checkpoints, a metrics file, and a way to report. A `StageContext` is one."""

    scratch: Path
    metrics_path: Path

    def log(self, **metrics: Any) -> None: ...
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def progress(self, total: float | None, description: str = "", unit: str = "it",
                 completed: float = 0) -> ContextManager[Any]: ...


class BatchSource(Protocol):
    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]: ...


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], Any]
"""(model, batch) -> an object with .loss (to backprop) and optionally .lm_loss,
.mtp_loss, .balance_loss, .n_tokens (see dsctl.model.LossOutput)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_compute(cfg: ComputeConfig) -> torch.device:
    """Apply a ComputeConfig: torch's CPU threads (0 keeps torch's default), and the device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


class StepStrategy:
    """How one step's gradients are computed and agreed on: here, one process running
    `grad_accum` micro-batches. `dsctl.train.strategies` swaps in data-parallel and
    pipeline versions; the core around them stays the same."""

    def bind(self, trainer: "Trainer") -> None:
        """Called once the trainer has placed the model (after any fp8 conversion)."""

    def forward_backward(self, trainer: "LMTrainer", step: int) -> tuple[dict[str, float], int]:
        """Accumulate the step's gradients; returns (mean losses by name, tokens seen)."""
        return self.run_micro_batches(trainer, step, range(trainer.cfg.grad_accum))

    def run_micro_batches(self, trainer: "LMTrainer", step: int, micros) -> tuple[dict[str, float], int]:
        """Forward/backward micro-batches `micros` of `step`, each loss weighted 1/len(micros)."""
        totals = {"loss": 0.0, "lm_loss": 0.0, "mtp_loss": 0.0, "balance_loss": 0.0}
        tokens, count = 0, len(micros)
        for micro in micros:
            batch = {k: v.to(trainer.device) for k, v in trainer.batches.batch(step, micro).items()}
            with trainer.autocast():
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

    def save_checkpoint(self, trainer: "Trainer") -> None:
        save_checkpoint(trainer.ckpt_dir, trainer.model, trainer.optimizer, trainer.state)

    def export(self, trainer: "Trainer", out: Path, tokenizer_from: Path | None) -> None:
        """Write the trained model as a checkpoint artifact into `out` (every rank calls it)."""
        from dsctl.train.artifacts import export_checkpoint

        export_checkpoint(trainer.model, out, tokenizer_from, latest_checkpoint(trainer.ckpt_dir))

    def linear_totals(self, trainer: "LMTrainer", batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Linear and FP8 Linear FLOPs of one forward on `batch` (dsctl.fp8.coverage)."""
        from dsctl.fp8.coverage import linear_totals

        batch = {k: v.to(trainer.device) for k, v in batch.items()}
        with trainer.autocast():
            return linear_totals(trainer.model, lambda: trainer.loss_fn(trainer.model, batch))

    def load_checkpoint(self, trainer: "Trainer", path: Path) -> dict[str, Any]:
        """Restore weights, optimizer and RNG from checkpoint `path`; returns the loop state."""
        return load_checkpoint(path, trainer.model, trainer.optimizer)

    def validation_loss(self, trainer: "LMTrainer") -> float:
        """Mean LM loss over `eval_batches` validation batches (no gradients)."""
        losses = []
        for i in range(trainer.cfg.eval_batches):
            batch = {k: v.to(trainer.device) for k, v in trainer.val_batches.batch(i).items()}
            with trainer.autocast():
                out = trainer.loss_fn(trainer.model, batch)
            losses.append(float(getattr(out, "lm_loss", out.loss)))
        return sum(losses) / len(losses)


class Trainer:
    """The training core; subclasses define `train_step` (see the module docstring)."""

    description = "train"
    """Label of the progress bar."""
    shown = ("loss", "lr")
    """Step metrics shown beside the progress bar."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, io: RunIO, *, strategy: StepStrategy | None = None,
                 spike_factor: float = 0.0):
        self.cfg, self.io, self.spike_factor = cfg, io, spike_factor
        self.device = use_compute(cfg)
        self.precision = (cfg.precision if cfg.precision != "auto"
                          else ("bf16" if self.device.type == "cuda" else "fp32"))
        if self.precision == "fp8":
            from dsctl.fp8 import convert_to_fp8

            converted = convert_to_fp8(model, min_features=cfg.fp8_min_features)
            io.info(f"fp8: {converted} Linear layers run through fine-grained FP8")
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.ckpt_dir = io.scratch / "checkpoints"
        self.state: dict[str, Any] = {"step": 0, "tokens": 0, "skipped": 0, "rollbacks": 0,
                                      "consecutive_bad": 0, "recent_losses": [], "val_loss": None}
        self.strategy = strategy or StepStrategy()
        self.strategy.bind(self)

    # -- what a subclass defines --------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        """Run step `step` (0-based; the learning rate is set): compute gradients, call
        `update` once or more, and return the step's metrics."""
        raise NotImplementedError

    def validates_after(self, completed: int) -> bool:
        """Whether to measure validation loss once `completed` steps are done."""
        return False

    def validation_loss(self) -> float:
        raise NotImplementedError

    def after_step(self, metrics: dict[str, Any]) -> None:
        """Bookkeeping once a step is counted, before its metrics are written."""

    def resumed(self) -> None:
        """Restore what the subclass keeps beside the checkpoint (after weights and state)."""

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._resume()
        with self.io.progress(cfg.max_steps, self.description, unit="step", completed=self.state["step"]) as bar:
            while self.state["step"] < cfg.max_steps:
                step = self.state["step"]
                lr = lr_at(step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                metrics = self.train_step(step)
                self.state["step"] = step + 1
                self.after_step(metrics)
                done = self.state["step"] == cfg.max_steps
                validate = self.validates_after(self.state["step"])
                checkpoint = self.state["step"] % cfg.checkpoint_every == 0 or done
                if validate:
                    metrics["val_loss"] = self.state["val_loss"] = self.validation_loss()
                if step % cfg.log_every == 0 or done or "val_loss" in metrics or "event" in metrics:
                    self.io.log(**metrics)
                if checkpoint:
                    self.strategy.save_checkpoint(self)
                bar.advance(1, **{k: metrics[k] for k in self.shown if k in metrics})
        return self.summary()

    def autocast(self):
        if self.device.type == "cuda" and self.precision in ("bf16", "fp8"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, step: int, loss: float) -> dict[str, Any]:
        """Clip the accumulated gradients and take one optimizer step, unless the step is
        bad (then drop its gradients); then move the router biases and zero the gradients."""
        cfg, model = self.cfg, self.model
        grad_norm = self.strategy.clip_grad_norm(self, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        metrics: dict[str, Any] = {"grad_norm": round(grad_norm, 6)}
        problem = self._problem(loss, grad_norm)
        if problem:
            self._skip(step, problem, metrics)
        else:
            self.optimizer.step()
            self.state["consecutive_bad"] = 0
            recent = self.state["recent_losses"]
            recent.append(loss)
            del recent[:-SPIKE_WINDOW]
            if hasattr(model, "update_router_biases"):
                self.strategy.sync_router_load(model)
                metrics.update({k: round(v, 4) for k, v in
                                model.update_router_biases(speed=cfg.router_bias_speed).items()})
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    def _problem(self, loss: float, grad_norm: float) -> str:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        recent = self.state["recent_losses"]
        if (self.spike_factor and len(recent) >= SPIKE_WINDOW // 2
                and loss > self.spike_factor * (sum(recent) / len(recent))):
            return f"loss spike: {loss:.4g} > {self.spike_factor} × recent mean {sum(recent) / len(recent):.4g}"
        return ""

    def _skip(self, step: int, problem: str, metrics: dict[str, Any]) -> None:
        """Never train through a bad step: drop its gradients; after several, roll back."""
        self.state["skipped"] += 1
        self.state["consecutive_bad"] += 1
        metrics["event"] = "skipped"
        metrics["reason"] = problem
        if hasattr(self.model, "update_router_biases"):
            self.model.update_router_biases(speed=0.0)  # forget this step's load counts
        self.io.warn(f"step {step + 1}: {problem}; step skipped")
        checkpoint = latest_checkpoint(self.ckpt_dir)
        if self.state["consecutive_bad"] >= self.cfg.max_bad_steps and checkpoint is not None:
            saved = self.strategy.load_checkpoint(self, checkpoint)
            self.state["rollbacks"] += 1
            self.state["consecutive_bad"] = 0
            self.state["recent_losses"] = saved["recent_losses"]
            metrics["event"] = "rollback"
            # Keep the step counter: the data moves on past the batches that went bad.
            self.io.warn(f"{self.cfg.max_bad_steps} bad steps in a row: rolled back weights to {checkpoint.name}")

    # -- resume -------------------------------------------------------------------------------
    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.ckpt_dir)
        if checkpoint is None:
            self.io.metrics_path.unlink(missing_ok=True)
            return
        self.state = self.strategy.load_checkpoint(self, checkpoint)
        self.resumed()
        step = self.state["step"]
        self.io.info(f"resumed from {checkpoint.name} (step {step}/{self.cfg.max_steps})")
        if self.io.metrics_path.exists():  # drop records of steps the checkpoint does not hold
            kept = [line for line in self.io.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            self.io.metrics_path.write_text("".join(line + "\n" for line in kept))

    def summary(self) -> dict[str, Any]:
        return {"steps": self.state["step"], "tokens": self.state["tokens"], "skipped_steps": self.state["skipped"],
                "rollbacks": self.state["rollbacks"], "precision": self.precision, "device": self.device.type}


def default_loss(cfg: LMTrainConfig) -> LossFn:
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        doc_ids = batch.get("doc_ids") if cfg.doc_masking else None
        return compute_loss(model, batch["input_ids"], batch["labels"], doc_ids=doc_ids)

    return loss_fn


class LMTrainer(Trainer):
    """A step is `grad_accum` micro-batches of a language-model loss (next-token + MTP +
    balance by default), then one update; validation loss every `eval_every` steps."""

    def __init__(self, model: nn.Module, batches: BatchSource, cfg: LMTrainConfig, io: RunIO, *,
                 val_batches: BatchSource | None = None, loss_fn: LossFn | None = None,
                 strategy: StepStrategy | None = None):
        self.batches, self.val_batches = batches, val_batches
        self.loss_fn = loss_fn or default_loss(cfg)
        super().__init__(model, cfg, io, strategy=strategy, spike_factor=cfg.spike_factor)

    def train_step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.model.train()
        totals, tokens = self.strategy.forward_backward(self, step)
        lr = self.optimizer.param_groups[0]["lr"]
        metrics: dict[str, Any] = {"step": step + 1, **{k: round(v, 6) for k, v in totals.items()}, "lr": lr}
        metrics.update(self.update(step, totals["loss"]))
        self.state["tokens"] += tokens
        metrics["tokens_per_s"] = round(tokens / max(time.perf_counter() - started, 1e-9), 1)
        return metrics

    def after_step(self, metrics: dict[str, Any]) -> None:
        self.state["last_loss"] = metrics["lm_loss"]

    def validates_after(self, completed: int) -> bool:
        every = self.cfg.eval_every
        return self.val_batches is not None and ((every and completed % every == 0) or completed == self.cfg.max_steps)

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.model.eval()
        loss = self.strategy.validation_loss(self)
        if hasattr(self.model, "update_router_biases"):
            self.model.update_router_biases(speed=0.0)  # validation must not steer routing
        self.model.train()
        return round(loss, 6)

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if self.state.get("val_loss") is not None:
            summary["val_loss"] = self.state["val_loss"]
        summary.update(train_loss=self.state.get("last_loss"), **super().summary())
        if self.precision == "fp8":
            summary.update(self.fp8_coverage())
        return summary

    @torch.no_grad()
    def fp8_coverage(self) -> dict[str, float]:
        """What FP8 covered, measured on one forward of the first training micro-batch."""
        from dsctl.fp8.coverage import coverage_report

        report = coverage_report(self.strategy.linear_totals(self, self.batches.batch(0)))
        if hasattr(self.model, "update_router_biases"):
            self.model.update_router_biases(speed=0.0)  # a measurement must not steer routing
        return report
