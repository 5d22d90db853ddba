"""ModelConfig: the DeepSeek-V3 hyper-parameters, named as Hugging Face's DeepseekV3Config names them.

Every architecture key has the name and meaning of `transformers.DeepseekV3Config`, so a
config round-trips through `config.json` unchanged. A few training knobs of ours (bias
update speed γ, balance-loss weight α, MTP loss weight λ) sit beside them; they are written
to `config.json` too (transformers ignores unknown keys) so a checkpoint remembers them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

# config.json keys that to_hf_dict() derives and this architecture fixes: on reading, a
# value other than the one we would write is an architecture we cannot run.
_FIXED_HF_KEYS = {
    "hidden_act": "silu", "tie_word_embeddings": False, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
}
_DERIVED_HF_KEYS = ("model_type", "architectures", "num_key_value_heads", "attention_dropout", "num_mtp_layers")


@dataclass
class ModelConfig:
    """Shape and training knobs of a DeepSeek-V3-style decoder (defaults: the "tiny" preset)."""

    vocab_size: int = 2048
    """Number of token ids (embedding rows and output-head columns)."""
    hidden_size: int = 64
    """Model width d: the residual stream size."""
    intermediate_size: int = 128
    """Hidden size of the dense SwiGLU MLP in the first `first_k_dense_replace` layers."""
    moe_intermediate_size: int = 32
    """Hidden size of each routed (and each shared) expert's SwiGLU MLP."""
    num_hidden_layers: int = 2
    """Number of transformer blocks in the main model (MTP modules come on top)."""
    num_attention_heads: int = 4
    """Attention heads n_h of MLA."""
    q_lora_rank: int | None = None
    """Rank d_c' of the query compression; None projects queries directly from the hidden state."""
    kv_lora_rank: int = 32
    """Rank d_c of the joint key/value latent c_kv: what the decode cache stores per token."""
    qk_nope_head_dim: int = 16
    """Per-head query/key dims that carry no position (the part absorbed at decode time)."""
    qk_rope_head_dim: int = 8
    """Dims of the decoupled RoPE query per head and of the single shared RoPE key k_pe."""
    v_head_dim: int = 16
    """Per-head value dims."""
    n_routed_experts: int = 8
    """Fine-grained routed experts per MoE layer."""
    n_shared_experts: int = 1
    """Shared experts per MoE layer (fused into one MLP of n_shared × moe_intermediate_size)."""
    num_experts_per_tok: int = 2
    """Routed experts K_r chosen per token."""
    first_k_dense_replace: int = 1
    """The first this-many layers use a dense MLP instead of MoE."""
    n_group: int = 2
    """Routed experts are split into this many groups for group-limited routing."""
    topk_group: int = 1
    """A token may only use experts from this many groups (chosen by their top-2 scores)."""
    routed_scaling_factor: float = 1.0
    """Multiplier applied to the (normalized) routed gate weights."""
    norm_topk_prob: bool = True
    """Normalize the selected sigmoid affinities to sum to 1 before scaling."""
    num_nextn_predict_layers: int = 1
    """Number D of sequential multi-token-prediction (MTP) modules; 0 disables MTP."""
    rope_theta: float = 10000.0
    """RoPE base θ."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE scaling, e.g. {"type": "yarn", "factor": 4, "original_max_position_embeddings": 512,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}; None = plain RoPE."""
    rope_interleave: bool = True
    """RoPE rotates interleaved pairs (x0,x1),(x2,x3)… as DeepSeek's weights expect."""
    max_position_embeddings: int = 2048
    """Longest context the model is meant for (after any YaRN extension)."""
    rms_norm_eps: float = 1e-6
    """Epsilon inside every RMSNorm."""
    initializer_range: float = 0.02
    """Std of the normal init of every linear and embedding weight."""
    attention_bias: bool = False
    """Biases on the MLA down/output projections (DeepSeek-V3: False)."""
    bos_token_id: int | None = 0
    """Beginning-of-sequence id written to config.json."""
    eos_token_id: int | None = 1
    """End-of-sequence id written to config.json (generation stops on it when asked)."""
    pad_token_id: int | None = None
    """Padding id written to config.json (the model itself never needs it: masks do)."""
    bias_update_speed: float = 0.001
    """γ: each router bias moves by ±γ per `update_router_biases()` (auxiliary-loss-free balancing)."""
    seq_aux_loss_alpha: float = 1e-4
    """α: weight of the complementary sequence-wise balance loss (0 disables it)."""
    mtp_loss_weight: float = 0.3
    """λ: the MTP loss is λ/D · Σ_k L_MTP^k (the paper uses 0.3 early, 0.1 late)."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Unknown keys read from a config.json, carried through to_hf_dict() untouched."""

    def __post_init__(self) -> None:
        _validate(self)

    # ---- derived sizes -------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: nope part + rope part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    # ---- Hugging Face interop ------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a DeepseekV3 `config.json` dict; accepts `rope_parameters` (transformers 5)."""
        d = dict(d)
        names = {f.name for f in fields(cls)} - {"extra"}
        rope_params = d.pop("rope_parameters", None)
        if rope_params and "rope_scaling" not in d:
            rope_params = dict(rope_params)
            d.setdefault("rope_theta", rope_params.pop("rope_theta", 10000.0))
            kind = rope_params.get("rope_type", rope_params.get("type", "default"))
            d["rope_scaling"] = None if kind == "default" else rope_params
        if "num_mtp_layers" in d and "num_nextn_predict_layers" not in d:
            d["num_nextn_predict_layers"] = d.pop("num_mtp_layers")
        for key, expected in _FIXED_HF_KEYS.items():
            value = d.pop(key, expected)
            if value != expected:
                raise ValueError(f"config.json has {key} = {value!r}; dsctl's model implements only {expected!r}.")
        heads = d.get("num_attention_heads")
        if d.get("num_key_value_heads") not in (None, heads):
            raise ValueError(f"config.json num_key_value_heads must equal num_attention_heads ({heads}) for MLA.")
        for key in _DERIVED_HF_KEYS:
            d.pop(key, None)
        for key in ("bos_token_id", "eos_token_id"):
            if isinstance(d.get(key), list):  # several ids: keep the first as the canonical one
                d[key] = d[key][0] if d[key] else None
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that transformers' DeepseekV3ForCausalLM loads (no remote code)."""
        d = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d.update(_FIXED_HF_KEYS)
        d.update(
            model_type="deepseek_v3",
            architectures=["DeepseekV3ForCausalLM"],
            num_key_value_heads=self.num_attention_heads,
            attention_dropout=0.0,
            num_mtp_layers=self.num_nextn_predict_layers,
        )
        return d

    # ---- presets and sizes ---------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named size ("tiny", "small", "100m") with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(cls(**PRESETS[name]), **overrides)

    def num_parameters(self) -> tuple[int, int]:
        """(total, activated per token) parameter counts, embeddings, head and MTP included.

        Activated counts every weight a token touches: all but the K_r-of-N_r routed experts
        it was not sent to.
        """
        d, n_heads = self.hidden_size, self.num_attention_heads
        if self.q_lora_rank is None:
            q = d * n_heads * self.qk_head_dim
        else:
            q = d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * n_heads * self.qk_head_dim
        kv = d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
        kv += self.kv_lora_rank * n_heads * (self.qk_nope_head_dim + self.v_head_dim)
        attn = q + kv + n_heads * self.v_head_dim * d + 2 * d  # + o_proj + two block norms
        if self.attention_bias:
            attn += (self.q_lora_rank or 0) + self.kv_lora_rank + self.qk_rope_head_dim + d
        expert = 3 * d * self.moe_intermediate_size
        dense_layer = attn + 3 * d * self.intermediate_size
        moe_fixed = attn + self.n_shared_experts * expert + self.n_routed_experts * d  # router weight
        moe_layer = moe_fixed + self.n_routed_experts * expert
        moe_active = moe_fixed + self.num_experts_per_tok * expert
        n_dense = min(self.first_k_dense_replace, self.num_hidden_layers)
        n_moe = self.num_hidden_layers - n_dense
        mtp_extra = 2 * d * d + 3 * d  # eh_proj + enorm, hnorm, shared_head.norm
        shared = 2 * self.vocab_size * d + d  # embedding, head, final norm
        mtp_total = mtp_active = 0
        for k in range(self.num_nextn_predict_layers):
            # MTP block k sits at layer index num_hidden_layers + k, dense only below first_k_dense_replace.
            is_moe = self.num_hidden_layers + k >= self.first_k_dense_replace
            mtp_total += mtp_extra + (moe_layer if is_moe else dense_layer)
            mtp_active += mtp_extra + (moe_active if is_moe else dense_layer)
        total = shared + n_dense * dense_layer + n_moe * moe_layer + mtp_total
        active = shared + n_dense * dense_layer + n_moe * moe_active + mtp_active
        return total, active


PRESETS: dict[str, dict[str, Any]] = {
    # CPU unit tests: ~0.5M parameters at vocab 2048 (the dataclass defaults).
    "tiny": {},
    # The CPU recipe: ~6M parameters (~3.5M activated) at vocab 4096; trains in minutes on a laptop.
    "small": dict(
        vocab_size=4096, hidden_size=192, intermediate_size=512, moe_intermediate_size=96,
        num_hidden_layers=4, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=64,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=1.0, max_position_embeddings=1024,
    ),
    # One GPU: ~96M total (~59M activated) parameters, DeepSeek-V3 proportions scaled down.
    "100m": dict(
        vocab_size=32000, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
        num_hidden_layers=8, num_attention_heads=8, q_lora_rank=256, kv_lora_rank=128,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, max_position_embeddings=4096,
    ),
}


def _validate(c: ModelConfig) -> None:
    """Raise ValueError naming the first bad field, in one sentence a user can act on."""
    positive = (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
        "num_hidden_layers", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
        "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
        "n_group", "topk_group", "max_position_embeddings",
    )
    for name in positive:
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
    for name in ("n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
        value = getattr(c, name)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"ModelConfig.{name} must be a non-negative integer, got {value!r}.")
    if c.q_lora_rank is not None and (not isinstance(c.q_lora_rank, int) or c.q_lora_rank <= 0):
        raise ValueError(f"ModelConfig.q_lora_rank must be None or a positive integer, got {c.q_lora_rank!r}.")
    if c.qk_rope_head_dim % 2:
        raise ValueError(f"ModelConfig.qk_rope_head_dim must be even for RoPE pairs, got {c.qk_rope_head_dim}.")
    if c.n_routed_experts % c.n_group:
        raise ValueError(
            f"ModelConfig.n_group={c.n_group} must divide n_routed_experts={c.n_routed_experts}."
        )
    if c.topk_group > c.n_group:
        raise ValueError(f"ModelConfig.topk_group={c.topk_group} must be at most n_group={c.n_group}.")
    per_group = c.n_routed_experts // c.n_group
    if c.n_group > 1 and per_group < 2:
        raise ValueError(
            f"ModelConfig.n_group={c.n_group} leaves {per_group} expert per group; group scores "
            "sum each group's top-2 experts, so use at most n_routed_experts/2 groups."
        )
    if c.num_experts_per_tok > c.topk_group * per_group:
        raise ValueError(
            f"ModelConfig.num_experts_per_tok={c.num_experts_per_tok} exceeds the "
            f"{c.topk_group * per_group} experts reachable in topk_group={c.topk_group} groups."
        )
    for name in ("rms_norm_eps", "initializer_range", "rope_theta", "routed_scaling_factor"):
        if not getattr(c, name) > 0:
            raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(c, name)!r}.")
    for name in ("bias_update_speed", "seq_aux_loss_alpha", "mtp_loss_weight"):
        if not (isinstance(getattr(c, name), (int, float)) and getattr(c, name) >= 0):
            raise ValueError(f"ModelConfig.{name} must be a number >= 0, got {getattr(c, name)!r}.")
    _validate_rope_scaling(c.rope_scaling)


def _validate_rope_scaling(rs: dict[str, Any] | None) -> None:
    if rs is None:
        return
    if not isinstance(rs, dict):
        raise ValueError(f"ModelConfig.rope_scaling must be a dict or None, got {type(rs).__name__}.")
    kind = rs.get("rope_type", rs.get("type"))
    if kind != "yarn":
        raise ValueError(f"ModelConfig.rope_scaling type must be 'yarn' (the only one supported), got {kind!r}.")
    factor = rs.get("factor")
    if not isinstance(factor, (int, float)) or factor < 1 or math.isnan(factor):
        raise ValueError(f"ModelConfig.rope_scaling['factor'] must be a number >= 1, got {factor!r}.")
    orig = rs.get("original_max_position_embeddings")
    if not isinstance(orig, int) or orig <= 0:
        raise ValueError(
            "ModelConfig.rope_scaling['original_max_position_embeddings'] must be a positive "
            f"integer (the pretraining context length), got {orig!r}."
        )
