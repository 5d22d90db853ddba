"""import: a Hugging Face DeepSeek-V3-architecture model as a dsctl checkpoint.

    dsctl import ./Moonlight-16B-A3B-Instruct

Reads a directory with `config.json` (`model_type = "deepseek_v3"`), safetensors weights
(one file or shards) and the model's own tokenizer (`tokenizer.json`, with the chat
template of `tokenizer_config.json` or `chat_template.jinja`); writes a `checkpoint`
every post-training stage, chat, serve and export take. FP8 weights are dequantized,
transformers' fused experts split, and every tensor checked against the model the config
describes (dsctl/train/hf_import.py). The key is the hash of the directory's files, so a
recipe that names the directory reruns only when they change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsctl.pipeline.stage import StageContext, StageSpec


@dataclass
class ImportConfig:
    path: str = ""
    """A Hugging Face model directory: config.json with model_type "deepseek_v3",
    *.safetensors weights and tokenizer.json."""
    dtype: str = "auto"
    """Weights' dtype in the checkpoint: auto (the model's own torch_dtype; FP8 weights are
    dequantized into it, bfloat16 when it names none), float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: name the Hugging Face model directory to import (dsctl import DIR)")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")


def run(ctx: StageContext) -> dict[str, Any]:
    import resource

    from dsctl.train.hf_import import import_hf

    cfg: ImportConfig = ctx.config
    started = time.perf_counter()
    with ctx.progress(None, f"import {cfg.path}", unit="shard") as bar:
        report = import_hf(Path(cfg.path), ctx.out, cfg.dtype, progress=lambda done, total: bar.advance(1))
    summary = report.summary()
    ctx.info(f"{summary['params'] / 1e6:.2f}M parameters ({summary['active_params'] / 1e6:.2f}M active), "
             f"{report.tensors} tensors, {report.dequantized} FP8 weights dequantized, {report.dtype}")
    if report.ignored_keys:
        ctx.info(f"config keys that do not shape the network, not used: {', '.join(report.ignored_keys)}")
    return {**summary, "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def fingerprint(cfg: ImportConfig) -> dict[str, Any]:
    """The directory's files are outside the store: their contents are part of the key."""
    from dsctl.pipeline.store import sha256_file

    root = Path(cfg.path)
    if not root.is_dir():
        return {"path": "missing"}
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.iterdir()) if p.is_file()}


STAGE = StageSpec(
    name="import",
    version=1,
    config=ImportConfig,
    run=run,
    output="checkpoint",
    inputs={},
    help="Import a Hugging Face DeepSeek-V3-architecture model (deepseek_v3 config, safetensors, FP8 "
         "block-scaled or not, its own tokenizer and chat template) as a checkpoint the post-training "
         "stages, chat, serve and export take.",
    fingerprint=fingerprint,
    example="dsctl import ./my-deepseek-v3-model",
    argument="path",
)
