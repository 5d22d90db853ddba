"""Run one stage through the real runner and store, for tests and notebooks.

    artifact = run_stage(clean.STAGE, {"min_words": 5}, {"corpus": [src_dir]}, tmp_path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsctl.pipeline.runner import Runner, single_stage_plan
from dsctl.pipeline.stage import StageSpec
from dsctl.pipeline.store import Artifact, Store
from dsctl.progress import Reporter


def run_stage(spec: StageSpec, config: dict[str, Any] | None = None,
              inputs: dict[str, list[Path | str | Artifact]] | None = None,
              workdir: Path | str = "work", seed: int = 0, force: bool = False) -> Artifact:
    """Build `spec` with `config` over `inputs` (slot -> artifacts, keys or paths)."""
    store = Store(workdir)
    resolved = []
    for slot, refs in (inputs or {}).items():
        kind = spec.inputs[slot].kind if slot in spec.inputs else None
        for ref in refs:
            artifact = ref if isinstance(ref, Artifact) else store.resolve(str(ref), kind)
            resolved.append((slot, artifact))
    plan = single_stage_plan(spec, config or {}, resolved, seed, where=f"stage {spec.name}")
    Runner(store, Reporter(quiet=True)).execute({plan.name: plan}, force={plan.name} if force else set())
    return store.artifact(plan.key)
