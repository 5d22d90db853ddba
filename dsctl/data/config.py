"""Config pieces the data stages share, each field declared once (see dsctl.configs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataWorkConfig:
    workers: int = 0
    """Worker processes (0 = one per CPU core). Does not change the output."""
    executor: str = "local"
    """Where the work runs: "local" (processes on this machine) or "ray" (Ray tasks). Does not change the output."""
    ray_address: str = ""
    """With executor "ray": "" starts a local Ray for the run, "auto" or "host:port" joins a cluster."""
    docs_per_batch: int = 512
    """Documents a worker takes at a time (memory vs. per-batch overhead). Does not change the output."""


@dataclass
class ShardOutputConfig:
    rows_per_shard: int = 50_000
    """Rows per output JSONL shard."""


@dataclass
class DatasetConfigName:
    dataset_config: str = ""
    """The `datasets` dataset's configuration name, if it has several (GSM8K: "main"; "" = default)."""
