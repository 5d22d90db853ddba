"""DeepSeekMoE: shared experts + fine-grained routed experts with auxiliary-loss-free balancing.

    s_i,t   = sigmoid(u_t · e_i)                       affinity of token t to expert i
    chosen  = TopK_{K_r}(s_i,t + b_i)                  within the topk_group best groups
    g_i,t   = s_i,t / Σ_{j∈chosen} s_j,t · routed_scaling_factor     (i ∈ chosen)
    h'_t    = u_t + Σ_shared FFN(u_t) + Σ_{i∈chosen} g_i,t FFN_i(u_t)

The bias b (`e_score_correction_bias`) is not trained by gradients: after each optimizer
step `update_bias` moves it by ±γ towards balance, from the load counted during training
forward passes. A small sequence-wise balance loss (weight α) complements it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .derived import derived
from .mlp import MLP

FEW_TOKENS = 2
"""Up to this many tokens run their K experts in turn instead of one sort and grouped GEMM:
a decoding row is one token, and a speculative verify step is two (the last token and the
MTP draft); both pay for every expert in a grouped GEMM, used or not."""


class Router(nn.Module):
    """Sigmoid affinities and group-limited top-k; the bias steers selection only."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        # A buffer, not a parameter: moved by the balancing rule, saved in checkpoints.
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))

    def _apply(self, fn, recurse=True):
        # Keep the bias fp32 through model.to(bf16): steps of γ = 0.001 vanish in bf16.
        super()._apply(fn, recurse)
        self.e_score_correction_bias = self.e_score_correction_bias.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> scores (N, E) fp32, chosen expert ids (N, K), gate weights (N, K) fp32."""
        c = self.config
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias
        if c.n_group > 1 and c.topk_group < c.n_group:
            groups = choice.view(-1, c.n_group, c.n_routed_experts // c.n_group)
            group_scores = groups.topk(2, dim=-1).values.sum(-1)  # (N, G): sum of each group's best two
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(c.topk_group, dim=-1).indices, True)
            choice = groups.masked_fill(~keep[..., None], float("-inf")).view_as(choice)
        expert_ids = choice.topk(c.num_experts_per_tok, dim=-1).indices
        # Gate weights come from the original scores, not score + bias: the bias is a
        # load-balancing device that decides *which* experts run, and letting it rescale their
        # outputs would change the function the model computes each time the bias moves.
        weights = scores.gather(1, expert_ids)
        if c.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return scores, expert_ids, weights * c.routed_scaling_factor


class MoE(nn.Module):
    """Shared + routed experts; names (gate, experts.{i}, shared_experts) follow HF DeepseekV3MoE."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d, e = config.hidden_size, config.moe_intermediate_size
        self.gate = Router(config)
        self.experts = nn.ModuleList(MLP(d, e) for _ in range(config.n_routed_experts))
        self.shared_experts = MLP(d, e * config.n_shared_experts) if config.n_shared_experts else None
        # Tokens routed to each expert since the last bias update (training forwards only).
        # Integer, so model.to(bf16) cannot round the counts.
        self.register_buffer("expert_load", torch.zeros(config.n_routed_experts, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> (output (B, T, d), sequence-wise balance loss · α (scalar)).

        token_mask (B, T) bool marks real tokens; padding is left out of load and loss.
        """
        B, T, d = x.shape
        flat = x.reshape(B * T, d)
        scores, expert_ids, weights = self.gate(flat)
        y = self._dispatch(flat, expert_ids, weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        balance = x.new_zeros((), dtype=torch.float32)
        if self.training:
            with torch.no_grad():
                ids = expert_ids if token_mask is None else expert_ids[token_mask.reshape(-1)]
                self.expert_load += torch.bincount(ids.flatten(), minlength=self.config.n_routed_experts)
            if self.config.seq_aux_loss_alpha > 0:
                balance = self.config.seq_aux_loss_alpha * sequence_balance_loss(
                    scores.view(B, T, -1), expert_ids.view(B, T, -1), token_mask)
        return y.view(B, T, d), balance

    def _dispatch(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sort (token, slot) pairs by expert, run each expert once on its contiguous rows
        (without autograd, up to ``FEW_TOKENS`` tokens run their own K experts in turn instead)."""
        N, K = expert_ids.shape
        if N <= FEW_TOKENS and self._can_group(x):
            ids = expert_ids.tolist()
            return torch.cat([self._one_token(x[i:i + 1], ids[i], weights[i]) for i in range(N)])
        flat_ids = expert_ids.flatten()
        order = flat_ids.argsort(stable=True)
        counts = torch.bincount(flat_ids, minlength=len(self.experts))
        token_of = order // K  # source token of each sorted row
        # index_select, not x[token_of]: its backward is one index_add_ (0.4 ms for 4,096 tokens
        # × 2 slots at d = 128) where advanced indexing's is an accumulating index_put_ (3.2 ms).
        rows = x.index_select(0, token_of)
        if self._can_group(x):
            routed = self._grouped_experts(rows, counts)
        else:
            sizes = counts.tolist()
            routed = torch.cat([self.experts[e](chunk) for e, chunk in enumerate(rows.split(sizes)) if sizes[e]])
        routed = routed * weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, token_of, routed.to(x.dtype))

    # ---- inference fast paths: one grouped GEMM over all experts, or one token's K ------
    def _can_group(self, x: torch.Tensor) -> bool:
        """Without autograd, plain-Linear experts on CPU (or bf16 CUDA) use the stacked weights.

        Training keeps one call per expert module so gradients reach each expert's own
        nn.Linear, and so FP8 (or other) Linear replacements are always honoured.
        """
        if torch.is_grad_enabled() or not hasattr(F, "grouped_mm"):
            return False
        if x.device.type == "cuda" and not (x.dtype == torch.bfloat16
                                            and torch.cuda.get_device_capability(x.device) >= (8, 0)):
            return False
        if x.device.type not in ("cpu", "cuda"):
            return False
        first = self.experts[0].gate_proj
        return type(first) is nn.Linear and first.weight.dtype == x.dtype

    def _stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, d, 2I) gate|up and (E, I, d) down weights, rebuilt whenever any expert weight changed."""

        def stack() -> tuple[torch.Tensor, torch.Tensor]:
            gate_up = torch.stack([torch.cat((e.gate_proj.weight, e.up_proj.weight)) for e in self.experts])
            down = torch.stack([e.down_proj.weight for e in self.experts])
            # Contiguous (E, in, out): a transposed view would be re-packed by every tiny GEMM.
            return gate_up.transpose(1, 2).contiguous(), down.transpose(1, 2).contiguous()

        return derived(self, "_stack", self._expert_weights(), stack)

    def _expert_weights(self) -> list[torch.Tensor]:
        """Every expert's three weights, listed once per set of expert modules: walking the
        modules for them on each decode step cost more than the grouped GEMM itself."""
        owner = (id(self.experts), id(self.experts[0].gate_proj))
        if getattr(self, "_weights_owner", None) != owner:
            self._weights = [p for e in self.experts for p in (e.gate_proj.weight, e.up_proj.weight,
                                                                 e.down_proj.weight)]
            self._weights_owner = owner
        return self._weights

    def _grouped_experts(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._stacked_weights()
        offs = counts.cumsum(0).to(torch.int32)
        gate, up = F.grouped_mm(rows, gate_up, offs=offs).chunk(2, dim=-1)
        return F.grouped_mm(F.silu(gate) * up, down, offs=offs)

    def _one_token(self, x: torch.Tensor, experts: list[int], weights: torch.Tensor) -> torch.Tensor:
        """One decoding token: a grouped GEMM pays for every expert, used or not, and the
        sort that groups rows is pure overhead for one row; run its K experts in turn."""
        gate_up, down = self._stacked_weights()
        out = None
        for e, w in zip(experts, weights):
            gate, up = (x @ gate_up[e]).chunk(2, dim=-1)
            y = ((F.silu(gate) * up) @ down[e]) * w
            out = y if out is None else out + y
        return out.to(x.dtype)

    # ---- auxiliary-loss-free balancing ---------------------------------------------------
    def max_load_violation(self) -> float:
        """max_load / mean_load − 1 over the load counted since the last update (0 = balanced)."""
        load = self.expert_load.float()
        return float(load.max() / load.mean() - 1) if load.sum() > 0 else 0.0

    @torch.no_grad()
    def update_bias(self, speed: float) -> None:
        """b_i += γ · sign(mean load − load_i): overloaded experts get picked less; reset counts.

        Data-parallel callers all-reduce `expert_load` across ranks before calling this.
        """
        load = self.expert_load.float()
        if load.sum() > 0:
            self.gate.e_score_correction_bias += speed * torch.sign(load.mean() - load)
        self.expert_load.zero_()


def sequence_balance_loss(scores: torch.Tensor, expert_ids: torch.Tensor,
                          token_mask: torch.Tensor | None) -> torch.Tensor:
    """Σ_i f_i P_i per sequence, averaged over the batch (DeepSeek-V3 eq. 17–20, without α).

    f_i = N_r / (K_r T) · #tokens routed to i;  P_i = mean_t s_i,t / Σ_j s_j,t.
    """
    B, T, E = scores.shape
    K = expert_ids.shape[-1]
    m = torch.ones(B, T, 1, device=scores.device) if token_mask is None else token_mask[..., None].float()
    n_tokens = m.sum(1).clamp(min=1)  # (B, 1)
    chosen = torch.zeros_like(scores).scatter_(-1, expert_ids, 1.0)
    f = (chosen * m).sum(1) * E / (K * n_tokens)
    p = (scores / scores.sum(-1, keepdim=True) * m).sum(1) / n_tokens
    return (f * p).sum(-1).mean()
