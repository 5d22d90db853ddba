"""Resumable training checkpoints: weights, optimizer, schedule position, RNG, loop state.

    <dir>/step-0000100/model.safetensors   every parameter and persistent buffer
                                           (router biases included)
                      /optimizer.pt        AdamW moments (loaded with weights_only=True)
                      /rng.pt              torch CPU (and CUDA) generator states
                      /state.json          step, counters, running loss window
    <dir>/LATEST                           name of the newest complete checkpoint

A checkpoint directory is written under a temporary name and renamed when complete, and
LATEST is replaced atomically after that, so a SIGKILL at any instant leaves the previous
checkpoint usable. The data cursor is the step itself (batches are a pure function of it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

KEEP = 2


def save_checkpoint(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:07d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, sort_keys=True))
    for path in tmp.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / "LATEST.tmp").write_text(name)
    os.replace(root / "LATEST.tmp", root / "LATEST")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / "LATEST"
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model (and optimizer, RNG) from `path`; returns the saved loop state."""
    load_model(model, str(path / "model.safetensors"), strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def copy_training_state(checkpoint: Path, dest: Path) -> None:
    """Put the final optimizer/RNG/loop state beside an exported checkpoint."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("optimizer.pt", "rng.pt", "state.json"):
        shutil.copy2(checkpoint / name, dest / name)
