"""Atomic file writes: a crash at any instant leaves the old file or the new one, never half.
The one way dsctl writes a file that something else reads back (markers, state, pointers,
published JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync it, and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any, sort_keys: bool = True) -> None:
    """JSON with an indent of 2 (keys sorted unless asked otherwise), no trailing newline."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys))
