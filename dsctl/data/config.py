"""Config pieces the data stages share, each field declared once (see dsctl.configs)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
class RowInputConfig:
    """Where a stage reads a user's rows from: files, a `datasets` dataset, or both."""

    paths: list[str] = field(default_factory=list)
    """JSONL or Parquet files, directories or glob patterns (`data/**/*.jsonl`) to read."""
    dataset: str = ""
    """A `datasets` name (loaded with `datasets.load_dataset`) or a local directory
    (a `save_to_disk` folder is opened with `load_from_disk`, any other folder of
    data files with `load_dataset`). "" = none."""
    dataset_config: str = ""
    """The dataset's configuration name, if it has several (GSM8K: "main"; "" = default)."""
