"""The config pieces training stages are built from, each field declared once.

    OptimizerConfig   AdamW and the learning-rate schedule
    ComputeConfig     device and CPU threads (also eval and rejection_sample)
    BatchConfig       sequences per forward pass (also eval)
    LoopConfig        steps, checkpoints, precision, bad-step handling, routing
    TrainConfig       both: everything the training core (dsctl.train.loop) reads
    LMBatchConfig     packed language-model batches and their validation loss
    LMTrainConfig     TrainConfig + LMBatchConfig: pretrain, extend, sft and distill
    ExamplesConfig    chat examples' validation split (sft, distill)

A stage config inherits the pieces it uses, so a recipe sets their keys flat in the stage
table (`[stages.pretrain] lr = 3e-3`), and changes a piece's default with
`dsctl.configs.stage_defaults` instead of declaring the field again. Defaults here are for
the CPU recipe's small model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class OptimizerConfig:
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    warmup_steps: int = 30
    """Linear warm-up steps from 0 to the peak learning rate."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """After warm-up: cosine decay, warmup-stable-decay (flat, then linear decay over the
    last `decay_fraction` of steps, as in DeepSeek-V3/MiniCPM), or constant."""
    decay_fraction: float = 0.2
    """Share of steps spent decaying under the `wsd` schedule."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (not applied to norms, biases or router biases)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2 (DeepSeek-V3 uses 0.95)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""


@dataclass
class ComputeConfig:
    device: str = "auto"
    """"auto" (CUDA if present, else CPU), "cpu" or "cuda"."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""


@dataclass
class BatchConfig:
    batch_size: int = 16
    """Sequences per forward pass: a training micro-batch, or a batch decoded together (eval)."""


@dataclass
class LoopConfig(BatchConfig, ComputeConfig):
    max_steps: int = 300
    """Training steps to take (grpo: one rollout batch and its updates per step)."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many steps (and always at the end)."""
    log_every: int = 1
    """Write a metrics record every this many steps."""
    max_bad_steps: int = 3
    """After this many consecutive skipped steps (non-finite loss or gradient, or a loss
    spike), roll back to the last checkpoint."""
    precision: Literal["auto", "fp32", "bf16", "fp8"] = "auto"
    """fp32; bf16 autocast (GPU); fp8 = fine-grained FP8 Linear layers (Triton on FP8 GPUs,
    exact torch emulation on CPU) with bf16 elsewhere on GPU. auto = bf16 on GPU, fp32 on CPU."""
    fp8_min_features: int = 1
    """With precision = fp8: a Linear narrower than this (in or out features) keeps the
    training precision. 1 converts every Linear (partial 128-blocks, as DeepSeek's kernels
    do). On CPU, where FP8 is emulated at ~3× an fp32 Linear's cost, 128 leaves the 64-wide
    experts of a small model in fp32 and makes a step ~1.5× faster."""
    router_bias_speed: float | None = None
    """γ of the auxiliary-loss-free router-bias updates after each step (None = the model
    config's bias_update_speed; 0 freezes routing, as DeepSeek-V3 does for its last
    pretraining tokens)."""


@dataclass
class TrainConfig(LoopConfig, OptimizerConfig):
    """Everything the training core reads."""


@dataclass
class LMBatchConfig:
    seq_len: int = 256
    """Tokens per training sequence (documents are packed to fill it; sft and distill drop,
    and count, examples longer than this; extend: 0 = factor × the base's trained context)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (effective batch = batch_size × grad_accum)."""
    doc_masking: bool = True
    """Attend within each packed document only (no attention across document boundaries)."""
    eval_every: int = 50
    """Validation loss every this many steps (0 disables; always run at the end)."""
    eval_batches: int = 8
    """Validation micro-batches per evaluation."""
    spike_factor: float = 3.0
    """A step whose loss exceeds this × the running mean loss is treated as a spike and
    skipped (0 disables the check)."""


@dataclass
class LMTrainConfig(LMBatchConfig, TrainConfig):
    """A training stage on packed language-model batches: pretrain, extend, sft, distill."""


@dataclass
class ExamplesConfig:
    val_fraction: float = 0.05
    """Share of chat examples held out for validation loss (at least one)."""
