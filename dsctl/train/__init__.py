"""The one training loop behind pretrain, extend, sft and distill (grpo reuses its parts).

    from dsctl.train import TrainConfig, Trainer
    Trainer(model, batches, config, ctx).fit()

Names are loaded on first use, so a stage module can import `dsctl.train.config` for its
config dataclass without paying for torch at CLI start-up.
"""

import importlib

_EXPORTS = {
    "TrainConfig": "dsctl.train.config",
    "Trainer": "dsctl.train.loop",
    "PackedExamples": "dsctl.train.batches",
    "PackedTokens": "dsctl.train.batches",
    "load_token_split": "dsctl.train.batches",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dsctl.train' has no attribute {name!r}")
