"""The pre-norm transformer block: x + MLA(RMSNorm(x)), then + FFN(RMSNorm(·)).

The FFN is a dense SwiGLU MLP in the first `first_k_dense_replace` layers, DeepSeekMoE after.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .mla import LatentCache, MultiHeadLatentAttention
from .mlp import MLP
from .moe import MoE
from .norm import RMSNorm


class DecoderLayer(nn.Module):
    """One block; names follow transformers' DeepseekV3DecoderLayer."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = MultiHeadLatentAttention(config)
        if layer_idx >= config.first_k_dense_replace:
            self.mlp: nn.Module = MoE(config)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                token_mask: torch.Tensor | None = None, *, cache: LatentCache | None = None,
                cache_start: int = 0, impl: str = "explicit") -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> (x (B, T, d), balance loss scalar (0 for a dense layer or in eval))."""
        x = x + self.self_attn(self.input_layernorm(x), *rope, mask, cache=cache, layer=self.layer_idx,
                               cache_start=cache_start, impl=impl)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            out, balance = self.mlp(h, token_mask)
        else:
            out, balance = self.mlp(h), x.new_zeros((), dtype=torch.float32)
        return x + out, balance
