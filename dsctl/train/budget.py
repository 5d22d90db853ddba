"""What a training step costs before it runs: FLOPs per token and bytes of memory.

These are estimates from the model's shape, not measurements, for two uses: refusing a
run that cannot fit before any work starts (`stages/pretrain.preflight`), and the
per-stage time and memory tables of a recipe (`benchmarks/estimate_recipe.py`).

FLOPs follow Kaplan/Chinchilla's accounting: a weight used by a token costs 2 FLOPs
forward and 4 backward, so 6 × (activated matmul parameters) per token, plus causal
attention's scores and values, 3 × h × (d_qk + d_v) × T per layer and token (the average
query sees T/2 keys; forward 2 × that, backward twice the forward). The input embedding is
a lookup, not a matmul; every MTP module multiplies by the shared output head once more.

Memory is what a step holds at its peak with AdamW and fp32 master weights: 16 bytes a
parameter (weights, gradients, two moments), the activations autograd keeps (counted per
layer below, at 4 bytes in fp32 and 2 under bf16 autocast), and the fp32 logits with their
gradient. Attention keeps an h × T probability row per token only on CPU, where SDPA's
math path runs; on CUDA the memory-efficient kernel keeps none. Allocator slack, FP8's
transient copies and fragmentation are not counted, which is why `fits` leaves a margin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dsctl.model.config import ModelConfig

GIB = 1024**3

#: A run is refused when its estimate exceeds this share of the device's memory: the
#: estimate leaves out allocator slack and the CUDA context (~0.5 GiB).
USABLE_SHARE = 0.9


def train_flops_per_token(c: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs of one training token at context `seq_len`."""
    _, active = c.num_parameters()
    matmul = active - c.vocab_size * c.hidden_size  # the embedding is a lookup
    matmul += c.num_nextn_predict_layers * c.vocab_size * c.hidden_size  # MTP reuses the head
    layers = c.num_hidden_layers + c.num_nextn_predict_layers
    attention = 3 * layers * c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * seq_len
    return 6.0 * matmul + attention


def activation_bytes_per_token(c: ModelConfig, seq_len: int, bytes_per_value: int, device: str) -> int:
    """Activations autograd keeps for one token through every layer (MTP modules included)."""
    d, h = c.hidden_size, c.num_attention_heads
    # Block input, two RMSNorm outputs and the residual after attention.
    values = 4 * d
    # MLA: the query and KV latents, per-head q, k (nope + the shared rope key) and v,
    # the attention output before W_O.
    values += (c.q_lora_rank or 0) + c.kv_lora_rank + c.qk_rope_head_dim
    values += h * (2 * c.qk_head_dim + 2 * c.v_head_dim)
    if device == "cpu":
        values += h * seq_len  # SDPA's math path keeps the probabilities
    # FFN: a dense SwiGLU keeps gate, up and their product; a MoE layer does that per
    # chosen and shared expert, plus the router scores and the dispatched copies.
    experts = c.num_experts_per_tok + c.n_shared_experts
    moe = c.n_routed_experts + experts * (3 * c.moe_intermediate_size) + 2 * c.num_experts_per_tok * d
    dense = 3 * c.intermediate_size
    n_dense = min(c.first_k_dense_replace, c.num_hidden_layers)
    n_moe = c.num_hidden_layers - n_dense + c.num_nextn_predict_layers
    per_mtp = 2 * d  # MTP's two extra norms and the concatenated projection input
    total = n_dense * (values + dense) + n_moe * (values + moe) + c.num_nextn_predict_layers * per_mtp
    return total * bytes_per_value


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step holds at its peak, by what holds them."""

    parameters: int
    """Weights, gradients and AdamW's two moments: 16 bytes a parameter."""
    activations: int
    """What autograd keeps for the backward pass, over one micro-batch."""
    logits: int
    """fp32 logits of the main and MTP heads, and their gradients."""

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.logits

    def describe(self) -> str:
        parts = (("weights+optimizer", self.parameters), ("activations", self.activations), ("logits", self.logits))
        return f"{self.total / GIB:.1f} GiB (" + ", ".join(f"{name} {b / GIB:.1f}" for name, b in parts) + ")"


def train_memory(c: ModelConfig, batch_size: int, seq_len: int, precision: str, device: str) -> MemoryEstimate:
    """The estimate for one micro-batch of `batch_size` × `seq_len` tokens."""
    total, _ = c.num_parameters()
    tokens = batch_size * seq_len
    half = precision in ("bf16", "fp8") or (precision == "auto" and device == "cuda")
    activations = tokens * activation_bytes_per_token(c, seq_len, 2 if half else 4, device)
    activations += batch_size * seq_len * seq_len  # the boolean document mask
    logits = tokens * c.vocab_size * 4 * 2 * (1 + c.num_nextn_predict_layers)
    return MemoryEstimate(16 * total, activations, logits)


def device_memory(device: str) -> tuple[str, int]:
    """(resolved device type, bytes of memory it has): the first CUDA device's total
    memory, or this machine's physical RAM for the CPU."""
    import torch

    kind = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device.split(":")[0]
    if kind == "cuda":
        return kind, torch.cuda.get_device_properties(0).total_memory
    return kind, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(c: ModelConfig, batch_size: int, seq_len: int, precision: str, device: str, what: str) -> MemoryEstimate:
    """Raise ValueError, naming the fixes, when the estimate exceeds the device's usable
    memory; return the estimate otherwise."""
    kind, capacity = device_memory(device)
    estimate = train_memory(c, batch_size, seq_len, precision, kind)
    if estimate.total > USABLE_SHARE * capacity:
        raise ValueError(
            f"{what} at batch_size {batch_size} × seq_len {seq_len} needs about {estimate.describe()} "
            f"to train, more than the {USABLE_SHARE:.0%} of this {kind} device's {capacity / GIB:.0f} GiB "
            "it may use: lower batch_size (and raise grad_accum to keep the tokens per step), "
            "shorten seq_len, or pick a smaller model")
    return estimate


def check_context(c: ModelConfig, seq_len: int, what: str) -> None:
    """Raise ValueError when training sequences are longer than the model's context."""
    if seq_len > c.max_position_embeddings:
        raise ValueError(
            f"seq_len {seq_len} is past {what}'s context of {c.max_position_embeddings} tokens "
            "(max_position_embeddings): shorten seq_len, or raise max_position_embeddings in "
            "model_overrides (or extend the context with the `extend` stage)")
