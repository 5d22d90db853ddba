"""The DeepSeek-V3-style model: config, modules, loss, generation, Hugging Face interop.

    from dsctl.model import ModelConfig, DeepSeekV3, generate
    model = DeepSeekV3(ModelConfig.preset("tiny"))
    logits = model(input_ids)                      # (B, T, vocab)
"""

from .config import ModelConfig
from .generate import GenerationResult, generate
from .loss import LossOutput, compute_loss
from .mla import LatentCache
from .model import DeepSeekV3, ModelOutput

__all__ = [
    "DeepSeekV3", "GenerationResult", "LatentCache", "LossOutput", "ModelConfig", "ModelOutput",
    "compute_loss", "generate",
]
