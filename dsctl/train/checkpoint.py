"""Resumable training checkpoints: weights, optimizer, schedule position, RNG, loop state.

    <dir>/step-0000100/model.safetensors   every parameter and persistent buffer
                                           (router biases included)
                      /optimizer.pt        AdamW moments (loaded with weights_only=True)
                      /rng.pt              torch CPU (and CUDA) generator states
                      /state.json          step, counters, running loss window
    <dir>/LATEST                           name of the newest complete checkpoint

When every rank holds a different part of the model (pipeline stages, expert shards),
each rank writes its own files, `model-rank00003.safetensors`, `optimizer-rank00003.pt`,
`rng-rank00003.pt` (a `Shard`), rank 0 adds state.json and shards.json, and no rank ever
holds more than its part. Such a checkpoint resumes on the same number of ranks.

A checkpoint directory is written under a temporary name and renamed when complete, and
LATEST is replaced atomically after that, so a SIGKILL at any instant leaves the previous
checkpoint usable. The data cursor is the step itself (batches are a pure function of it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from dsctl.errors import UserError
from dsctl.files import write_text_atomic

KEEP = 2


@dataclass(frozen=True)
class Shard:
    """This rank's share of a checkpoint that every rank writes."""

    rank: int
    world: int
    barrier: Callable[[], None]
    """Blocks until every rank reached it (torch.distributed.barrier)."""

    @property
    def suffix(self) -> str:
        return f"-rank{self.rank:05d}"


def save_checkpoint(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    shard: Shard | None = None) -> Path:
    """Write `step-<state.step>` (all of it, or this rank's files when `shard` is given:
    then every rank must call it) and point LATEST at it once it is complete."""
    lead = shard is None or shard.rank == 0
    sync = shard.barrier if shard is not None else (lambda: None)
    suffix = shard.suffix if shard is not None else ""
    name = f"step-{state['step']:07d}"
    tmp = root / f".tmp-{name}"
    if lead:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sync()
    written = [tmp / f"model{suffix}.safetensors", tmp / f"optimizer{suffix}.pt", tmp / f"rng{suffix}.pt"]
    save_model(model, str(written[0]))
    torch.save(optimizer.state_dict(), written[1])
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, written[2])
    if lead:
        written.append(tmp / "state.json")
        written[-1].write_text(json.dumps(state, sort_keys=True))
        if shard is not None:
            written.append(tmp / "shards.json")
            written[-1].write_text(json.dumps({"ranks": shard.world}))
    for path in written:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    sync()  # every rank's files are on disk before the checkpoint becomes visible
    final = root / name
    if lead:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(root / "LATEST", name)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    sync()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / "LATEST"
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    shard: Shard | None = None) -> dict[str, Any]:
    """Restore model (and optimizer, RNG) from `path`, or this rank's part of it; returns
    the saved loop state."""
    suffix = shard.suffix if shard is not None else ""
    if shard is not None:
        layout = path / "shards.json"
        ranks = json.loads(layout.read_text())["ranks"] if layout.is_file() else 1
        if ranks != shard.world:
            raise CheckpointLayoutError(f"{path} was written by {ranks} rank(s) holding different parts of the model; "
                                        f"resume it with the same number of processes (not {shard.world})")
    load_model(model, str(path / f"model{suffix}.safetensors"), strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / f"optimizer{suffix}.pt", weights_only=True))
    rng = torch.load(path / f"rng{suffix}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


class CheckpointLayoutError(UserError):
    """A checkpoint's shards do not fit the processes asked to resume it."""


def copy_training_state(checkpoint: Path, dest: Path) -> None:
    """Put the final optimizer/RNG/loop state (every rank's, if sharded) beside an exported checkpoint."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(checkpoint.iterdir()):
        if not path.name.startswith("model"):
            shutil.copy2(path, dest / path.name)
