"""DeepSeekV3: embedding -> N pre-norm MLA/MoE blocks -> RMSNorm -> untied head, plus MTP.

Parallel and FP8 code act on this model from outside: every large projection is a plain
nn.Linear, and the pipeline-relevant parts are plain attributes (`embed_tokens`, `layers`,
`norm`, `lm_head`, `mtp`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .block import DecoderLayer
from .config import ModelConfig
from .mla import LatentCache
from .moe import MoE, Router
from .mtp import MTPModule, shift_left
from .norm import RMSNorm
from .rope import RotaryEmbedding

PartBuilder = Callable[[str, Callable[[], nn.Module]], nn.Module]
"""(part name, build) -> the module that stands for the part (see DeepSeekV3.__init__)."""


@dataclass
class ModelOutput:
    """Everything a training loss needs from one forward pass."""

    logits: torch.Tensor | None
    """(B, T, vocab): position t predicts token t+1 (None when compute_logits=False)."""
    hidden_states: torch.Tensor
    """(B, T, d): last block output before the final norm (the input of MTP depth 1)."""
    balance_loss: torch.Tensor
    """Scalar: α-weighted sequence-wise balance loss summed over MoE layers (0 in eval)."""
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    """Depth k = 1..D: (B, T, vocab), position t predicts token t+k+1 (empty unless mtp=True)."""
    mtp_hidden_states: list[torch.Tensor] = field(default_factory=list)
    """Depth k = 1..D: (B, T, d) MTP block outputs before their `shared_head.norm`."""


@dataclass
class AttentionContext:
    """Per-forward inputs shared by every block: rope tables and masks."""

    rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None  # (B, 1, T, S) bool, True = may attend; None = plain causal
    token_mask: torch.Tensor | None  # (B, T) bool, real tokens (for MoE load and balance loss)
    position_ids: torch.Tensor


class DeepSeekV3(nn.Module):
    """The decoder. `model(input_ids) -> logits (B, T, vocab)`; `model.outputs(input_ids)`
    -> ModelOutput, everything one pass computes."""

    def __init__(self, config: ModelConfig, *, build_part: PartBuilder | None = None):
        """Build the model. `build_part(name, build)` returns what stands for each top-level
        part (names from `model_parts(config)`, in that order; default: `build()`): how a
        pipeline rank builds only its stages (dsctl.parallel.pipeline_stages.build_model)."""
        super().__init__()
        self.config = config
        part = build_part or (lambda name, build: build())
        n = config.num_hidden_layers
        self.embed_tokens = part("embed_tokens", lambda: nn.Embedding(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(part(f"layers.{i}", lambda i=i: DecoderLayer(config, i)) for i in range(n))
        self.norm = part("norm", lambda: RMSNorm(config.hidden_size, config.rms_norm_eps))
        self.lm_head = part("lm_head", lambda: nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        # MTP module k uses cache/layer index n + k, as DeepSeek's release numbers it.
        self.mtp = nn.ModuleList(part(f"mtp.{k}", lambda k=k: MTPModule(config, n + k))
                                 for k in range(config.num_nextn_predict_layers))
        self.rotary = RotaryEmbedding(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if drawn_at_init(module):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        # A stand-in for a part built elsewhere makes the draws the part would have made, so
        # every later part draws what it would in a whole build.
        replay = getattr(module, "replay_init_draws", None)
        if replay is not None:
            replay(std)

    # ---- forward ------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                cache: LatentCache | None = None, attn_impl: str | None = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab); `outputs` documents the options and
        returns everything else one pass computes (hidden states, balance loss, MTP)."""
        return self.outputs(input_ids, attention_mask=attention_mask, position_ids=position_ids, doc_ids=doc_ids,
                            cache=cache, attn_impl=attn_impl, logits_to_keep=logits_to_keep).logits

    def outputs(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                cache: LatentCache | None = None, attn_impl: str | None = None, mtp: bool = False,
                logits_to_keep: int = 0, compute_logits: bool = True) -> ModelOutput:
        """One forward pass, all of it: logits, the last hidden states, the balance loss and,
        with `mtp`, the MTP modules' outputs.

        attention_mask: (B, S) 1 = real, 0 = pad (S = cached slots + T); for left padding.
            Positions then count real tokens only, so a left-padded row scores like unpadded.
        position_ids: (B, T) explicit RoPE positions (overrides the derived ones).
        doc_ids: (B, T) document id per token of a packed row: attention is causal within a
            document only and positions restart at each document.
        cache: a LatentCache to append this chunk's c_kv/k_pe to (generation).
        attn_impl: "explicit", "absorbed" or "folded" (see mla.py); default "folded" (absorbed
            MLA with its weight products precomputed) when decoding past cached slots.
        mtp: also run the MTP modules (ModelOutput.mtp_logits).
        logits_to_keep: if > 0, only the last this-many positions get logits (saves the head).
        compute_logits: False skips the output head (ModelOutput.logits is None); a loss that
            scores only some positions applies the head to those alone.
        """
        past = cache.length if cache is not None else 0
        ctx = self.attention_context(input_ids, attention_mask, position_ids, doc_ids, past)
        impl = attn_impl or ("folded" if past > 0 else "explicit")
        h = self.embed_tokens(input_ids)
        balance = h.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            h, b = layer(h, ctx.rope, ctx.mask, ctx.token_mask, cache=cache, cache_start=past, impl=impl)
            balance = balance + b
        if cache is not None:
            cache.length = max(cache.length, past + input_ids.shape[1])
        logits = None
        if compute_logits:
            logits = self.lm_head(self.norm(h[:, -logits_to_keep:] if logits_to_keep else h))
        out = ModelOutput(logits=logits, hidden_states=h, balance_loss=balance)
        if mtp:
            out.mtp_hidden_states, mtp_balance = mtp_hidden_states(self.mtp, self.embed_tokens, h, input_ids, ctx, impl)
            out.balance_loss = out.balance_loss + mtp_balance
            if compute_logits:
                out.mtp_logits = [self.lm_head(module.shared_head.norm(h_k))
                                  for module, h_k in zip(self.mtp, out.mtp_hidden_states)]
        return out

    def mtp_step(self, depth: int, hidden: torch.Tensor, next_ids: torch.Tensor, *,
                 attention_mask: torch.Tensor | None, cache: LatentCache, cache_start: int,
                 position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run MTP module `depth` (0-based) on a chunk during decoding.

        hidden (B, T, d) is the previous depth's output at slots [cache_start, cache_start+T),
        next_ids (B, T) the token following each slot. Returns (logits, hidden), both (B, T, ·).
        """
        ctx = self.attention_context(next_ids, attention_mask, position_ids, None, cache_start)
        module = self.mtp[depth]
        impl = "folded" if cache_start > 0 else "explicit"
        h, _ = module(hidden, self.embed_tokens(next_ids), ctx.rope, ctx.mask, ctx.token_mask,
                      cache=cache, cache_start=cache_start, impl=impl)
        return self.lm_head(module.shared_head.norm(h)), h

    def attention_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          position_ids: torch.Tensor | None, doc_ids: torch.Tensor | None,
                          past: int) -> AttentionContext:
        """Rope tables and the (B, 1, T, S) mask for a chunk of T tokens after `past` slots."""
        return attention_context(self.rotary, self.embed_tokens.weight.dtype, input_ids.shape, input_ids.device,
                                 attention_mask, position_ids, doc_ids, past)

    # ---- MoE balancing and sizes ------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        """Every MoE block, main layers first, then MTP modules."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def router_load_stats(self) -> dict[str, float | list[list[float]]]:
        """Per-MoE-layer expert load since the last bias update and the max load violation."""
        moes = self.moe_layers()
        violations = [m.max_load_violation() for m in moes]
        return {
            "expert_load": [m.expert_load.tolist() for m in moes],
            "max_load_violation": max(violations, default=0.0),
            "mean_load_violation": sum(violations) / len(violations) if violations else 0.0,
        }

    @torch.no_grad()
    def update_router_biases(self, speed: float | None = None) -> dict[str, float]:
        """Call after each optimizer step: move every router bias by ±γ, reset load counters.

        Returns the load-violation metrics of the window just consumed.
        """
        stats = self.router_load_stats()
        for m in self.moe_layers():
            m.update_bias(self.config.bias_update_speed if speed is None else speed)
        return {k: v for k, v in stats.items() if k != "expert_load"}

    def num_parameters(self) -> tuple[int, int]:
        """(total, activated per token) parameters, counted from the live modules."""
        total = sum(p.numel() for p in self.parameters())
        idle = 0
        for m in self.moe_layers():
            per_expert = sum(p.numel() for p in m.experts[0].parameters())
            idle += (len(m.experts) - self.config.num_experts_per_tok) * per_expert
        return total, total - idle


def attention_context(rotary: RotaryEmbedding, dtype: torch.dtype, shape: torch.Size, device: torch.device,
                      attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                      doc_ids: torch.Tensor | None, past: int) -> AttentionContext:
    """Rope tables (in `dtype`) and the (B, 1, T, S) mask for a (B, T) chunk after `past`
    slots; a function, so a pipeline stage without the embedding builds the same context."""
    B, T = shape
    S = past + T
    if attention_mask is not None and attention_mask.shape != (B, S):
        raise ValueError(f"attention_mask must have shape (batch, cached + new) = {(B, S)}, "
                         f"got {tuple(attention_mask.shape)}.")
    if doc_ids is not None and (past > 0 or doc_ids.shape != (B, T)):
        raise ValueError(f"doc_ids must have shape {(B, T)} and cannot be used with a cache.")
    if T == 1 and past > 0 and attention_mask is not None and doc_ids is None:
        return _decode_step_context(rotary, dtype, attention_mask, position_ids)
    if position_ids is None:
        position_ids = _default_positions(B, T, past, attention_mask, doc_ids, device)
    mask = token_mask = None
    if attention_mask is not None or doc_ids is not None:
        q_slot = torch.arange(past, S, device=device)[:, None]
        mask = (torch.arange(S, device=device)[None, :] <= q_slot)[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            keys_ok = attention_mask.bool()
            mask = mask & keys_ok[:, None, None, :]
            token_mask = keys_ok[:, past:]
        if doc_ids is not None:
            mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
        # Every query may see itself, so a pad query's softmax row is never empty (no NaN).
        mask = mask | (torch.arange(S, device=device)[None, :] == q_slot)[None, None]
    rope = rotary(position_ids, dtype)
    return AttentionContext(rope=rope, mask=mask, token_mask=token_mask, position_ids=position_ids)


def _decode_step_context(rotary: RotaryEmbedding, dtype: torch.dtype, attention_mask: torch.Tensor,
                         position_ids: torch.Tensor | None) -> AttentionContext:
    """`attention_context` for one new token after cached slots, the step a decode loop
    repeats: its query is the last slot, so causality hides nothing and the mask is the
    padding mask alone, or none without padding. Same attention as the general path in a
    third of its operations."""
    keys_ok = attention_mask.bool()
    mask = None  # no padding anywhere (one request, or rows of one length): nothing to hide
    if not bool(keys_ok.all()):
        mask = keys_ok.clone()
        mask[:, -1] = True  # the query sees itself (a pad row's softmax is never empty)
        mask = mask[:, None, None, :]
    if position_ids is None:  # as _default_positions: real tokens so far, minus one
        position_ids = (attention_mask.sum(-1, keepdim=True) - 1).clamp(min=0)
    return AttentionContext(rope=rotary(position_ids, dtype), mask=mask, token_mask=keys_ok[:, -1:],
                            position_ids=position_ids)


def mtp_hidden_states(modules: nn.ModuleList, embed_tokens: nn.Module, h: torch.Tensor, input_ids: torch.Tensor,
                      ctx: AttentionContext, impl: str = "explicit") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the MTP depths on the main model's last block output `h`: (each depth's block
    output, their summed balance loss). Depth k sees the embedding of token t+k."""
    hiddens, balance = [], h.new_zeros((), dtype=torch.float32)
    h_k, ids = h, input_ids
    for module in modules:
        ids = shift_left(ids)
        h_k, b = module(h_k, embed_tokens(ids), ctx.rope, ctx.mask, ctx.token_mask, impl=impl)
        hiddens.append(h_k)
        balance = balance + b
    return hiddens, balance


def _default_positions(B: int, T: int, past: int, attention_mask: torch.Tensor | None,
                       doc_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """RoPE positions: restart per document, else count real tokens (left padding), else 0..S-1."""
    if doc_ids is None and attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
    if doc_ids is not None:
        idx = torch.arange(T, device=device).expand(B, T)
        starts = torch.ones_like(doc_ids, dtype=torch.bool)
        starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        # Position = index − index of the current document's first token.
        first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(-1).values
        return idx - first
    return torch.arange(past, past + T, device=device).expand(B, T)


def model_parts(config: ModelConfig) -> list[str]:
    """The top-level parts of a DeepSeekV3, in the order they are built and initialised."""
    return (["embed_tokens"] + [f"layers.{i}" for i in range(config.num_hidden_layers)] + ["norm", "lm_head"]
            + [f"mtp.{k}" for k in range(config.num_nextn_predict_layers)])


def drawn_at_init(module: nn.Module) -> bool:
    """Whether `_init_weights` draws this module's weight from the generator. Every such
    module is a leaf, so a part's draws follow `modules()` order."""
    return isinstance(module, (nn.Linear, nn.Embedding, Router))
