"""Parallelism applied to single-device modules: torch.distributed setup, pipeline
schedules (DualPipe, 1F1B) with a cost simulator, data and expert parallel helpers.

Model code never imports this package; these functions wrap modules built for one device.
The DeepSeekV3 stage adapter lives in ``dsctl.parallel.model_stages`` (it imports the model).

Names are loaded on first use, so ``python -m dsctl.parallel.schedule_sim`` and the
other runnable modules do not import themselves twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "data_parallel": ["DataParallelMode", "all_reduce_grads", "wrap_data_parallel"],
    "dist": ["DistInfo", "ParallelGroups", "distributed", "init_distributed", "is_rank0", "log_rank0",
             "pipeline_data_groups", "teardown"],
    "dualpipe": ["DualPipe", "dualpipe_schedule"],
    "expert_parallel": ["ExpertParallelMoE", "all_to_all", "apply_expert_parallel"],
    "launch": ["spawn_workers"],
    "onef1b": ["OneF1B", "onef1b_schedule"],
    "pipeline": ["LinkGroups", "PipelineExecutor"],
    "schedule": ["Op", "OpKind", "PipelineSchedule"],
    "schedule_sim": ["OpCosts", "SimResult", "compare", "paper_bubble", "render_timeline", "simulate"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'dsctl.parallel' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dsctl.parallel.{_MODULE_OF[name]}"), name)
