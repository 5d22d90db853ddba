"""Checkpoint artifacts: HF DeepseekV3 weights + config + tokenizer files at
the root, so `transformers` and `AutoTokenizer` open the directory as it is, and the
training state that produced it under `training_state/`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dsctl.errors import UserError
from dsctl.pipeline.store import Artifact
from dsctl.tokenizer import vocabulary_file
from dsctl.train.checkpoint import copy_training_state

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
"""A Hugging Face fast tokenizer's files (transformers 5 writes the chat template to
chat_template.jinja): all an imported model's tokenizer is."""
TOKENIZER_FILES = ("tokenizer.model", "special_tokens.json", *HF_TOKENIZER_FILES)
"""A tokenizer's files, dsctl's or an imported one's, that a checkpoint keeps beside its
weights."""


def tokenizer_dir(artifact: Artifact) -> Path:
    """Where an artifact keeps its tokenizer (either kind, `dsctl.tokenizer.load_tokenizer`):
    shards have `tokenizer/`, checkpoints the root."""
    for candidate in (artifact.path / "tokenizer", artifact.path):
        if vocabulary_file(candidate) is not None:
            return candidate
    raise UserError(f"{artifact.label} ({artifact.path}) has no tokenizer (tokenizer.model or tokenizer.json)")


def export_checkpoint(model, out: Path, tokenizer_from: Path | None, training_checkpoint: Path | None) -> None:
    from dsctl.model.hf import save_hf

    save_hf(model, out)
    export_companions(out, tokenizer_from, training_checkpoint)


def export_companions(out: Path, tokenizer_from: Path | None, training_checkpoint: Path | None) -> None:
    """What a checkpoint artifact keeps beside its weights: tokenizer files and the
    training state that produced them."""
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, out / name)
    if training_checkpoint is not None:
        copy_training_state(training_checkpoint, out / "training_state")


def load_model(artifact: Artifact):
    """The DeepSeekV3 model stored in a checkpoint artifact (fp32, CPU)."""
    from dsctl.model.hf import load_hf

    if not (artifact.path / "config.json").is_file():
        raise UserError(f"{artifact.label} ({artifact.path}) is not a checkpoint: no config.json")
    return load_hf(artifact.path)


def unigram_loss(train_docs: list[np.ndarray], eval_tokens: np.ndarray, vocab_size: int, eos_id: int) -> float:
    """Cross-entropy (nats) of an add-one unigram model fit on the training tokens: the
    floor any language model must beat to have learned more than token frequencies."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for doc in train_docs:
        counts += np.bincount(doc, minlength=vocab_size)[:vocab_size]
    counts[eos_id] += len(train_docs)
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_tokens].mean())


def check_hf_export(directory: Path, seed: int = 0) -> dict[str, float | bool | None]:
    """Open an exported checkpoint with transformers (no remote code) and compare it with
    ours: the max |logit difference| on random ids, and whether `AutoTokenizer` encodes a
    sample exactly as our tokenizer does (None when the directory has no tokenizer)."""
    import torch
    import transformers

    from dsctl.model.hf import load_hf

    transformers.logging.set_verbosity_error()
    ours = load_hf(directory).eval()
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=generator)
    with torch.no_grad():
        diff = float((ours(ids) - theirs(ids).logits).abs().max())
    tokenizer_match = None
    if vocabulary_file(directory) is not None:
        from dsctl.tokenizer import load_tokenizer

        sample = "Compute 12 + 35. <think>12 + 35 = 47</think><answer>47</answer> naïve café 🙂"
        hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
        tokenizer_match = (hf_tok(sample, add_special_tokens=False)["input_ids"]
                           == load_tokenizer(directory).encode(sample))
    return {"max_logit_diff": diff, "tokenizer_match": tokenizer_match}


def trained_context(manifest: dict[str, Any], model_config: Any) -> int:
    """The context a checkpoint was trained at: YaRN's scaled length if it was already
    extended, else the `seq_len` its training stage used, else max_position_embeddings."""
    rs = model_config.rope_scaling
    if rs:
        return int(rs["original_max_position_embeddings"] * rs["factor"])
    seq_len = manifest.get("config", {}).get("seq_len")
    return int(seq_len) if seq_len else int(model_config.max_position_embeddings)
