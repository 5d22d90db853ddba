"""Rotary position embedding for MLA's decoupled key/query, with DeepSeek-V3's YaRN scaling.

Only the `qk_rope_head_dim` part of each query head and the one shared key k_pe rotate.
YaRN (Peng et al. 2023) as DeepSeek-V3 and transformers' DeepseekV3 apply it:

* dimension pair i has wavelength λ_i = 2π · θ^(2i/d); pairs that turn more than β_fast
  times over the original context keep their frequency (extrapolation), pairs that turn
  fewer than β_slow times are divided by the scale s (interpolation), and a linear ramp
  over the pair index blends the two in between;
* the softmax scale is multiplied by mscale² with mscale = 0.1 · mscale_all_dim · ln s + 1
  (when `mscale_all_dim` is set), and cos/sin are multiplied by
  mscale(s, mscale) / mscale(s, mscale_all_dim) (1 for DeepSeek-V3, where both are 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature factor 0.1 · mscale · ln(s) + 1 (1 when s ≤ 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    """The (fractional) pair index whose wavelength fits `num_rotations` times into max_pos."""
    return dim * math.log(max_pos / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq of shape (qk_rope_head_dim/2,), cos/sin multiplier) for this config."""
    dim, base = config.qk_rope_head_dim, config.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / base**exponents
    rs = config.rope_scaling
    if rs is None:
        return inv_freq.float(), 1.0
    factor = float(rs["factor"])
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    orig = rs["original_max_position_embeddings"]
    # Pair indices below `low` rotate fast (> β_fast turns): keep them; above `high`: interpolate.
    low = max(math.floor(_yarn_correction_dim(beta_fast, dim, base, orig)), 0)
    high = min(math.ceil(_yarn_correction_dim(beta_slow, dim, base, orig)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    # ramp = 0 -> extrapolation (original frequency), ramp = 1 -> interpolation (frequency / s).
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        cos_sin_scale = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        cos_sin_scale = yarn_mscale(factor)
    return inv_freq.float(), float(cos_sin_scale)


def softmax_scale(config: ModelConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale(s, mscale_all_dim)² under YaRN (as HF DeepseekV3)."""
    scale = config.qk_head_dim**-0.5
    rs = config.rope_scaling
    if rs is not None and rs.get("mscale_all_dim"):
        scale *= yarn_mscale(float(rs["factor"]), rs["mscale_all_dim"]) ** 2
    return scale


class RotaryEmbedding(nn.Module):
    """Turns position ids (B, T) into cos/sin tables (B, T, 1, qk_rope_head_dim/2)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq, self.cos_sin_scale = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids[..., None].float() * self.inv_freq  # (B, T, dr/2)
        cos, sin = angles.cos(), angles.sin()
        if self.cos_sin_scale != 1.0:
            cos, sin = cos * self.cos_sin_scale, sin * self.cos_sin_scale
        cos, sin = cos.to(dtype), sin.to(dtype)
        return cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads in (B, T, H, dr/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x (B, T, H, dr) by the position angles.

    interleave=True pairs dims (0,1),(2,3)… (DeepSeek's layout); the result is written
    de-interleaved (all rotated evens, then all rotated odds). Queries and keys get the
    same permutation, so their dot products, the only thing attention uses, are unchanged.
    """
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
