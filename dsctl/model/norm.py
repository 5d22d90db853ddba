"""RMSNorm, computed in fp32 like transformers' DeepseekV3RMSNorm so exported logits match."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = w · x / sqrt(mean(x²) + eps); statistics in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)
