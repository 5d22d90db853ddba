"""Context extension with YaRN: the scaled RoPE config, and a model copy that uses it.

YaRN as DeepSeek-V3 applies it (`dsctl.model.rope`): rotary pairs that turn more than
β_fast times over the original context keep their frequency, pairs that turn fewer than
β_slow times are slowed by the factor s, a ramp blends the pairs in between, and the
attention logits are sharpened by mscale² = (0.1 · ln s + 1)². The weights do not
change; a short fine-tune on long documents (dsctl.train.long_context) then teaches the
model to use the range.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dsctl.model.model import DeepSeekV3


def yarn_rope_scaling(factor: float, original_context: int, beta_fast: float = 32.0,
                      beta_slow: float = 1.0, mscale: float = 1.0) -> dict[str, Any]:
    """The `rope_scaling` entry of config.json, with DeepSeek-V3's fields and values
    (mscale = mscale_all_dim, so cos/sin stay unscaled and only the softmax sharpens)."""
    if factor < 1:
        raise ValueError(f"the YaRN factor must be >= 1, got {factor}")
    return {"type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original_context),
            "beta_fast": float(beta_fast), "beta_slow": float(beta_slow),
            "mscale": float(mscale), "mscale_all_dim": float(mscale)}


def with_yarn(model: Any, factor: float, original_context: int, **yarn: float) -> Any:
    """A copy of `model` whose RoPE is YaRN-scaled by `factor` over `original_context`.

    A model that is already scaled keeps its original context and gets the product of
    both factors, so extending twice by 2 equals extending once by 4.
    """
    old = model.config.rope_scaling
    if old:
        factor, original_context = factor * float(old["factor"]), int(old["original_max_position_embeddings"])
    config = dataclasses.replace(model.config, rope_scaling=yarn_rope_scaling(factor, original_context, **yarn),
                                 max_position_embeddings=int(round(original_context * factor)))
    scaled = DeepSeekV3(config)
    scaled.load_state_dict(model.state_dict())  # rope tables are buffers rebuilt from config
    return scaled.to(next(model.parameters()).device)
