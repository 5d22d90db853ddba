"""Multi-token prediction (DeepSeek-V3 §2.2): D sequential modules on top of the main model.

Depth k (1-based) at position i combines the previous depth's hidden state h_i^{k-1}
(h^0 = the main model's last block output) with the embedding of token t_{i+k}:

    h'_i^k = W_eh [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})]     (2d -> d)
    h_i^k  = TransformerBlock_k(h'_{≤i}^k)                         (causal over positions)
    P_{i+k+1}^k = OutHead(RMSNorm(h_i^k))                           predicts token t_{i+k+1}

Embedding and output head are the main model's (shared, not copied). The concat puts the
embedding first, as DeepSeek's released MTP weights (`eh_proj`) expect.
"""

from __future__ import annotations

import torch
from torch import nn

from .block import DecoderLayer
from .config import ModelConfig
from .norm import RMSNorm


class SharedHead(nn.Module):
    """The per-module final norm in front of the shared output head (`shared_head.norm`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPModule(DecoderLayer):
    """One MTP depth: a decoder block fed by eh_proj(concat(enorm(emb), hnorm(h_prev)))."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        d = config.hidden_size
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.shared_head = SharedHead(config)

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, *args,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """h_prev, emb_next (B, T, d) -> (h^k (B, T, d), balance loss); the rest as DecoderLayer."""
        x = self.eh_proj(torch.cat((self.enorm(emb_next), self.hnorm(h_prev)), dim=-1))
        return super().forward(x, *args, **kwargs)


def shift_left(input_ids: torch.Tensor) -> torch.Tensor:
    """t_{i+1} at position i. The last position repeats its token: a filler whose
    predictions the loss never uses (their targets fall past the end)."""
    return torch.cat((input_ids[:, 1:], input_ids[:, -1:]), dim=1)
