"""Cut a single-device ``DeepSeekV3`` into pipeline stages for DualPipe / 1F1B.

Stage 0 embeds token ids, the last stage ends with the final RMSNorm and the LM head,
and the decoder layers are spread over the stages as evenly as possible (earlier stages
get the extra layer, since the last also runs the head). Stages share their modules
with the model (no copy), so a checkpoint of the model is a checkpoint of the stages.

MoE balance loss: each MoE layer returns its α-weighted sequence balance loss. A stage
cannot send it down the pipeline (one boundary tensor), so it adds the loss's gradient
in place during backward (the Megatron "aux loss auto-scaler" idea): the hidden state
passes through unchanged, and backward also differentiates ``scale · balance`` where
``scale`` is the executor's 1/num_microbatches. Gradients then equal those of
``dsctl.model.compute_loss(..., mtp_weight=0).loss`` averaged over micro-batches.

Scope: plain causal language modelling over full rows (no padding mask, no packed
``doc_ids``, no MTP); those need extra tensors at every stage boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from dsctl.model import DeepSeekV3
from dsctl.model.loss import shifted_cross_entropy


class _AddAuxGrad(torch.autograd.Function):
    """Identity on ``hidden``; backward also sends ``scale`` into ``aux`` (an extra loss term)."""

    @staticmethod
    def forward(ctx, hidden, aux, scale):  # noqa: D102 (autograd protocol)
        ctx.scale = scale
        ctx.aux_shape, ctx.aux_dtype = aux.shape, aux.dtype
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        aux_grad = torch.full(ctx.aux_shape, ctx.scale, dtype=ctx.aux_dtype, device=grad.device)
        return grad, aux_grad, None


class DeepSeekV3Stage(nn.Module):
    """Layers ``[start, end)`` of a ``DeepSeekV3``, plus the embedding (first) or norm+head (last)."""

    def __init__(self, model: DeepSeekV3, start: int, end: int, first: bool, last: bool) -> None:
        super().__init__()
        self.embed_tokens = model.embed_tokens if first else None
        self.layers = nn.ModuleList(model.layers[start:end])
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.rotary = model.rotary
        self.layer_range = (start, end)
        self.loss_scale = 1.0
        """Weight of this micro-batch's loss; set by the pipeline executor via ``set_loss_scale``."""

    def set_loss_scale(self, scale: float) -> None:
        """Called by ``PipelineExecutor``: the factor every micro-batch loss is multiplied by."""
        self.loss_scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """token ids (B, T) on the first stage, else hidden (B, T, d) -> hidden, or logits on the last."""
        h = self.embed_tokens(x) if self.embed_tokens is not None else x
        B, T = h.shape[:2]
        positions = torch.arange(T, device=h.device).expand(B, T)
        dtype = next(self.layers.parameters()).dtype if len(self.layers) else h.dtype
        rope = self.rotary(positions, dtype)
        balance = h.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            h, b = layer(h, rope, None, None)
            balance = balance + b
        if balance.requires_grad:
            h = _AddAuxGrad.apply(h, balance, self.loss_scale)
        if self.lm_head is not None:
            h = self.lm_head(self.norm(h))
        return h


def split_layers(num_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """``[start, end)`` layer ranges, sizes differing by at most one, extra layers first."""
    if num_stages < 1 or num_layers < num_stages:
        raise ValueError(f"cannot cut {num_layers} decoder layers into {num_stages} pipeline stages; "
                         f"use at most {num_layers} stages or a deeper model (num_hidden_layers)")
    base, extra = divmod(num_layers, num_stages)
    bounds, start = [], 0
    for s in range(num_stages):
        end = start + base + (1 if s < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def split_deepseek_v3(model: DeepSeekV3, num_stages: int) -> list[DeepSeekV3Stage]:
    """All ``num_stages`` stages of ``model`` (a rank keeps the ones it runs)."""
    bounds = split_layers(len(model.layers), num_stages)
    return [DeepSeekV3Stage(model, a, b, first=s == 0, last=s == num_stages - 1)
            for s, (a, b) in enumerate(bounds)]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (labels aligned with inputs, shifted here; -100 unscored)."""
    return shifted_cross_entropy(logits, labels, 1)[0]
