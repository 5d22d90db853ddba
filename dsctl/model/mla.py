"""Multi-head Latent Attention (DeepSeek-V2/V3) with decoupled RoPE and a latent-only cache.

Per token t (paper notation, shapes per token):
    c_q  = RMSNorm(W_DQ h)                 (q_lora_rank)   — or no compression: q = W_Q h
    q_nope, q_pe = split(W_UQ c_q)         (H, dn), (H, dr);  q_pe = RoPE(q_pe)
    c_kv, k_pe = split(W_DKV h)            (r), (dr);         c_kv = RMSNorm(c_kv); k_pe = RoPE(k_pe)
    k_nope, v = split(W_UKV c_kv)          (H, dn), (H, dv)
    o = softmax(q·k / τ) v,  k = [k_nope; k_pe] (k_pe shared by all heads);  out = W_O o

Two ways to compute the same attention, side by side as in DeepSeek's `attn_impl`:
* "explicit" (training, prefill): expand c_kv into per-head k_nope and v, then SDPA.
* "absorbed" (decoding): q_nope·k_nope = (W_UK^T q_nope)·c_kv, so W_UK is absorbed into
  the query and keys never leave the latent space; W_UV is applied after attending over
  c_kv. The cache holds only c_kv and k_pe: kv_lora_rank + qk_rope_head_dim values per
  token per layer.
* "folded" (decoding without autograd, the default there): the same attention with the
  absorption done once in the weights: W_UK^T W_Q^nope (times the softmax scale) is one
  query matrix, stacked with W_DKV so one GEMM yields queries and latents, and
  W_O · W_UV is one output matrix. A decode step then runs three GEMMs per layer instead
  of seven, which is most of its cost at short prompts. Where folding would grow the
  weights (kv_lora_rank > 2 · min(qk_nope_head_dim, v_head_dim), as at DeepSeek-V3's own
  sizes), under autograd, or on projections that are not plain bias-free nn.Linear (FP8),
  "folded" runs as "absorbed".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .derived import derived
from .norm import RMSNorm
from .rope import apply_rope, softmax_scale


class LatentCache:
    """Preallocated per-layer latent cache [c_kv ; k_pe]; slot = index along the sequence.

    One tensor (layers, B, slots, kv_lora_rank + qk_rope_head_dim) holds both parts side by
    side, so the absorbed decode path reads its latent keys as a view, with no per-step copy.
    `length` is the number of slots written so far. A caller may also write a chunk at an
    explicit start slot (speculative decoding re-uses slots) and mask slots out instead of
    deleting them.
    """

    def __init__(self, config: ModelConfig, num_layers: int, batch_size: int, max_slots: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.kv_lora_rank = config.kv_lora_rank
        width = config.kv_lora_rank + config.qk_rope_head_dim
        self.kv = torch.zeros(num_layers, batch_size, max_slots, width, dtype=dtype, device=device)
        self.length = 0

    @property
    def c_kv(self) -> torch.Tensor:
        """(layers, B, slots, kv_lora_rank) view of the cached latents."""
        return self.kv[..., : self.kv_lora_rank]

    @property
    def k_pe(self) -> torch.Tensor:
        """(layers, B, slots, qk_rope_head_dim) view of the cached rotated RoPE keys."""
        return self.kv[..., self.kv_lora_rank :]

    @property
    def max_slots(self) -> int:
        return self.kv.shape[2]

    def write(self, layer: int, start: int, c_kv: torch.Tensor, k_pe: torch.Tensor) -> torch.Tensor:
        """Store (B, T, r) / (B, T, dr) at [start, start+T); return [c_kv; k_pe] of slots [0, start+T)."""
        end = start + c_kv.shape[1]
        if end > self.max_slots:
            raise ValueError(f"LatentCache is full: writing up to slot {end} of {self.max_slots}; allocate more slots.")
        self.kv[layer, :, start:end, : self.kv_lora_rank] = c_kv
        self.kv[layer, :, start:end, self.kv_lora_rank :] = k_pe
        return self.kv[layer, :, :end]

    def bytes_per_token(self) -> int:
        """Cache bytes one token costs across all layers this cache holds."""
        return self.kv.shape[0] * self.kv.shape[-1] * self.kv.element_size()


class MultiHeadLatentAttention(nn.Module):
    """MLA; parameter names follow transformers' DeepseekV3Attention for 1:1 weight export."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, d = config, config.hidden_size
        self.n_heads, self.dn, self.dr, self.dv = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim,
                                                   c.v_head_dim)
        self.kv_lora_rank = c.kv_lora_rank
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(d, self.n_heads * c.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, c.q_lora_rank, bias=c.attention_bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.rms_norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, self.n_heads * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, c.kv_lora_rank + self.dr, bias=c.attention_bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, self.n_heads * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.dv, d, bias=c.attention_bias)
        self.softmax_scale = softmax_scale(config)

    def _queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        if self.config.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(B, T, self.n_heads, self.dn + self.dr).split([self.dn, self.dr], dim=-1)
        return q_nope, apply_rope(q_pe, cos, sin, self.config.rope_interleave)  # (B,T,H,dn), (B,T,H,dr)

    def _latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.dr], dim=-1)
        k_pe = apply_rope(k_pe[:, :, None, :], cos, sin, self.config.rope_interleave)[:, :, 0]
        return self.kv_a_layernorm(c_kv), k_pe  # (B, T, r), (B, T, dr)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                *, cache: LatentCache | None = None, layer: int = 0, cache_start: int = 0,
                impl: str = "explicit") -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). `mask` (B, 1, T, S) bool (True = may attend) or None = causal.

        With a cache, this chunk's c_kv/k_pe are written at slots [cache_start, cache_start+T)
        and attention runs over slots [0, cache_start+T).
        """
        if impl == "folded":
            if self._can_fold():
                return self._forward_folded(x, cos, sin, mask, cache, layer, cache_start)
            impl = "absorbed"
        q_nope, q_pe = self._queries(x, cos, sin)
        c_kv, k_pe = self._latent(x, cos, sin)
        if cache is not None:
            latent = cache.write(layer, cache_start, c_kv, k_pe)  # (B, S, r + dr), past included
            c_kv, k_pe = latent.split([self.kv_lora_rank, self.dr], dim=-1)
        if impl == "explicit":
            o = self._attend_explicit(q_nope, q_pe, c_kv, k_pe, mask)
        elif impl == "absorbed":
            latent = torch.cat((c_kv, k_pe), dim=-1) if cache is None else latent
            o = self._attend_absorbed(q_nope, q_pe, latent, mask)
        else:
            raise ValueError(f"MLA impl must be 'explicit', 'absorbed' or 'folded', got {impl!r}.")
        return self.o_proj(o.flatten(2))

    def _attend_explicit(self, q_nope, q_pe, c_kv, k_pe, mask) -> torch.Tensor:
        """Up-project the latent into full per-head keys and values; (B, T, H, dv)."""
        B, S, _ = c_kv.shape
        k_nope, v = self.kv_b_proj(c_kv).view(B, S, self.n_heads, self.dn + self.dv).split([self.dn, self.dv], dim=-1)
        T = q_nope.shape[1]
        if mask is None and 1 < T < S:  # SDPA's is_causal aligns top-left; past slots need a real mask
            mask = _causal_mask(T, S, c_kv.device)
        q = torch.cat((q_nope, q_pe), dim=-1).transpose(1, 2)  # (B, H, T, dn+dr)
        k = torch.cat((k_nope, k_pe[:, :, None, :].expand(B, S, self.n_heads, self.dr)), dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)
        if self.dv < self.dn + self.dr:
            # SDPA's fused (flash) kernels want one head dim for q, k and v; zero-padding v
            # costs little and lets causal attention skip masked blocks instead of computing them.
            v = F.pad(v, (0, self.dn + self.dr - self.dv))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           scale=self.softmax_scale)
        return o[..., : self.dv].transpose(1, 2)

    def _attend_absorbed(self, q_nope, q_pe, latent, mask) -> torch.Tensor:
        """Attend in the latent space: W_UK folded into q, W_UV applied afterwards; (B, T, H, dv)."""
        B, T, H, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(H, self.dn + self.dv, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn :]  # (H, dn, r), (H, dv, r)
        q_latent = torch.matmul(q_nope.transpose(1, 2), w_uk)  # (B, H, T, r) = q_nope · W_UK per head
        q = torch.cat((q_latent, q_pe.transpose(1, 2)), dim=-1).transpose(1, 2) * self.softmax_scale
        o_latent = self._latent_attention(q, latent, mask)
        return torch.matmul(o_latent.transpose(1, 2), w_uv.transpose(1, 2)).transpose(1, 2)  # · W_UV

    def _latent_attention(self, q: torch.Tensor, latent: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Scaled latent queries q (B, T, H, r + dr) over latent keys (B, S, r + dr) -> (B, T, H, r)."""
        B, T, H, _ = q.shape
        # Every head shares one latent key [c_kv; k_pe] and value c_kv (like MQA), so the
        # T*H (time, head) queries form one long query axis of a single-head attention.
        scores = torch.matmul(q.reshape(B, T * H, -1), latent.transpose(1, 2))  # (B, T*H, S)
        if mask is None and T > 1:
            mask = _causal_mask(T, latent.shape[1], latent.device)
        if mask is not None:
            # (B|1, 1, T, S) -> rows in (t, h) order. Plain matmul + softmax rather than SDPA:
            # with one latent "head" of odd width SDPA takes its slow math path.
            mask = mask[:, 0].repeat_interleave(H, dim=1) if T > 1 else mask[:, 0]
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.float().softmax(-1).to(latent.dtype)  # fp32 softmax, as HF, when running bf16
        return torch.matmul(probs, latent[..., : self.kv_lora_rank]).view(B, T, H, self.kv_lora_rank)

    # ---- "folded": the absorbed attention with its weight products computed once ------------
    def _can_fold(self) -> bool:
        projections = [self.kv_a_proj_with_mqa, self.kv_b_proj, self.o_proj]
        projections += [self.q_proj] if self.config.q_lora_rank is None else [self.q_a_proj, self.q_b_proj]
        return (not torch.is_grad_enabled()
                and self.kv_lora_rank <= 2 * min(self.dn, self.dv)
                and all(type(p) is nn.Linear and p.bias is None for p in projections))

    def _folded_weights(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(input projection, folded q_b or None, output projection), as nn.Linear weights.

        Input: rows [q of every head; c_kv; k_pe] without q LoRA, [c_q; c_kv; k_pe] with it
        (the folded query then comes from c_q through the second matrix). A head's query
        rows are [scale · W_UK^T W_Q^nope ; scale · W_Q^pe]: RoPE is linear, so scaling
        before rotating equals scaling the scores. Output: W_O · blockdiag(W_UV), (d, H·r).
        """
        H, dn, dr, dv, r = self.n_heads, self.dn, self.dr, self.dv, self.kv_lora_rank
        q_source = self.q_proj if self.config.q_lora_rank is None else self.q_b_proj
        sources = [q_source.weight, self.kv_a_proj_with_mqa.weight, self.kv_b_proj.weight, self.o_proj.weight]
        if self.config.q_lora_rank is not None:
            sources.append(self.q_a_proj.weight)

        def fold():
            w_kv = self.kv_b_proj.weight.view(H, dn + dv, r)
            w_q = q_source.weight.view(H, dn + dr, -1)
            q_latent = torch.einsum("hnr,hni->hri", w_kv[:, :dn], w_q[:, :dn])  # (H, r, in)
            q = (torch.cat((q_latent, w_q[:, dn:]), 1) * self.softmax_scale).reshape(H * (r + dr), -1)
            w_o = self.o_proj.weight.view(-1, H, dv)
            out = torch.einsum("dhv,hvr->dhr", w_o, w_kv[:, dn:]).reshape(w_o.shape[0], H * r)
            if self.config.q_lora_rank is None:
                return torch.cat((q, self.kv_a_proj_with_mqa.weight)), None, out
            return torch.cat((self.q_a_proj.weight, self.kv_a_proj_with_mqa.weight)), q, out

        return derived(self, "_folded", sources, fold)

    def _forward_folded(self, x, cos, sin, mask, cache, layer, cache_start) -> torch.Tensor:
        B, T, _ = x.shape
        H, dr, r = self.n_heads, self.dr, self.kv_lora_rank
        w_in, w_q, w_out = self._folded_weights()
        if w_q is None:
            q, c_kv, k_pe = F.linear(x, w_in).split([H * (r + dr), r, dr], dim=-1)
        else:
            c_q, c_kv, k_pe = F.linear(x, w_in).split([self.config.q_lora_rank, r, dr], dim=-1)
            q = F.linear(self.q_a_layernorm(c_q), w_q)
        q = q.view(B, T, H, r + dr)
        # Rotate the H query parts and the one key part in one call: slot H is the key.
        pe = apply_rope(torch.cat((q[..., r:], k_pe[:, :, None]), dim=2), cos, sin, self.config.rope_interleave)
        c_kv = self.kv_a_layernorm(c_kv)
        if cache is not None:
            latent = cache.write(layer, cache_start, c_kv, pe[:, :, H])
        else:
            latent = torch.cat((c_kv, pe[:, :, H]), dim=-1)
        o = self._latent_attention(torch.cat((q[..., :r], pe[:, :, :H]), dim=-1), latent, mask)
        return F.linear(o.reshape(B, T, H * r), w_out)


def _causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(1, 1, T, S) bool: the last T of S slots are the queries; each sees itself and the past."""
    q_slot = torch.arange(S - T, S, device=device)[:, None]
    return (torch.arange(S, device=device)[None, :] <= q_slot)[None, None]
