"""Digest a recipe's artifacts, to check that a refactoring changed none of them.

    python benchmarks/artifact_digest.py WORKDIR mini_r1 > before.json
    ... change the code, run the recipe into a fresh WORKDIR2 ...
    python benchmarks/artifact_digest.py WORKDIR2 mini_r1 --against before.json

For each stage of the recipe's last run: the object key and the sha256 of every file the
manifest lists, and the manifest's metrics. JSON and JSONL files, where stages record
wall-clock figures (tokens/s, seconds), are compared with those fields removed; every other
file must match byte for byte, but for the TensorBoard event files under `tensorboard/`: they
mirror metrics.jsonl (compared already) with wall times, host and pid in their bytes and
names, so they are left out. `--against` prints each difference and exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from dsctl.pipeline.stage import TENSORBOARD_DIR

TIMING_WORDS = ("per_s", "seconds", "elapsed", "wall")


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not any(w in k for w in TIMING_WORDS)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _file_digest(path: Path) -> str:
    if path.suffix in (".json", ".jsonl"):
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        return "untimed:" + hashlib.sha256(json.dumps(_untimed(data), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(workdir: Path, recipe: str) -> dict:
    out = {}
    for ref in sorted((workdir / "refs" / recipe).glob("*.json")):
        key = json.loads(ref.read_text())["key"]
        obj = workdir / "objects" / key
        manifest = json.loads((obj / "manifest.json").read_text())
        compared = sorted(rel for rel in manifest["files"] if not rel.startswith(f"{TENSORBOARD_DIR}/"))
        out[ref.stem] = {"key": key, "files": {rel: _file_digest(obj / rel) for rel in compared},
                         "metrics": _untimed(manifest.get("metrics", {}))}
    return out


def differences(before: dict, after: dict) -> list[str]:
    found = []
    for stage in sorted(set(before) | set(after)):
        if stage not in before or stage not in after:
            found.append(f"{stage}: only in {'after' if stage in after else 'before'}")
            continue
        b, a = before[stage], after[stage]
        if b["key"] != a["key"]:
            found.append(f"{stage}: key {b['key'][:12]} -> {a['key'][:12]}")
        for rel in sorted(set(b["files"]) | set(a["files"])):
            if b["files"].get(rel) != a["files"].get(rel):
                found.append(f"{stage}: file {rel} differs")
        for name in sorted(set(b["metrics"]) | set(a["metrics"])):
            if b["metrics"].get(name) != a["metrics"].get(name):
                found.append(f"{stage}: metric {name} {b['metrics'].get(name)!r} -> {a['metrics'].get(name)!r}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("recipe")
    parser.add_argument("--against", type=Path, help="a digest written earlier by this script")
    args = parser.parse_args()
    now = digest(args.workdir, args.recipe)
    if args.against is None:
        json.dump(now, sys.stdout, indent=1, sort_keys=True)
        return
    found = differences(json.loads(args.against.read_text()), now)
    print("\n".join(found) if found else f"{len(now)} stages: every key, file and metric identical")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
