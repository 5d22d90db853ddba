"""The one training loop behind pretrain, extend, sft and distill (grpo reuses its parts).

    from dsctl.train import TrainConfig, Trainer
    Trainer(model, batches, config, ctx).fit()
"""

from dsctl.train.batches import PackedExamples, PackedTokens, load_token_split
from dsctl.train.config import TrainConfig
from dsctl.train.loop import Trainer

__all__ = ["PackedExamples", "PackedTokens", "TrainConfig", "Trainer", "load_token_split"]
