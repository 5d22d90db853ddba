"""Smoke mode: any recipe's whole chain in minutes, to check it before spending GPU hours.

`dsctl run RECIPE --smoke` plans the recipe as written, then shrinks every stage's config
with `shrink`: each field that sets a size is capped at the value in `CAPS` (one,
`FLOORS`, is raised so the chain can finish), the model and a from-scratch student
become the "tiny" preset, and the shape keys of their overrides are dropped. Everything
else — the stages, their wiring, the task families and difficulty, precision, parallel
layout, schedules — stays as the recipe says, so a smoke run exercises the code paths
the real run will take on whatever device is there. Its artifacts go to
`<workdir>/smoke/`, a store of their own, so they are never mistaken for (or cached as)
the real ones.

What shrinks is defined here once, by field name: a config field name means one thing
in every stage (dsctl/configs.py), so one table serves every recipe, and
`tests/test_smoke.py` checks each name still exists in some stage's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Field -> the largest value a smoke run uses. A value of 0 keeps its meaning ("auto",
#: "off") because it is never above a cap.
CAPS: dict[str, int] = {
    # training loops: a few steps, still crossing a checkpoint and a validation pass
    "max_steps": 4,
    "checkpoint_every": 2,
    "eval_every": 2,
    "warmup_steps": 1,
    "batch_size": 4,
    "grad_accum": 1,
    "seq_len": 128,
    # the tiny model is 64 wide: keep its 64-wide Linears in FP8 where the recipe uses it
    "fp8_min_features": 64,
    "eval_batches": 1,
    "ppl_batches": 1,
    "length_eval_batches": 1,
    # problems drawn, sampled and scored
    "train_problems": 64,
    "eval_problems": 16,
    "eval_problems_per_family": 16,
    "group_size": 4,
    "prompts_per_step": 4,
    "samples_per_prompt": 2,
    "prompts_per_chunk": 16,
    "max_new_tokens": 32,
    "passkey_trials": 2,
    "passkey_batch_size": 2,
    # the default world and its tokenizer
    "task_problems_per_family": 300,
    "max_prose_docs": 300,
    "passkey_docs": 20,
    "ledger_docs": 20,
    "exact_dups": 10,
    "near_dups": 10,
    "boilerplate": 10,
    "junk": 10,
    "short": 10,
    "non_english": 10,
    "vocab_size": 512,
}

#: Field -> the smallest value a smoke run uses. A smoke teacher answers nothing right,
#: so rejection sampling accepts nothing; worked problems give distill (whose default is
#: teacher samples only, 0) something to learn from, so the chain runs to its end.
FLOORS: dict[str, int] = {"train_problems": 16}

#: Field -> the value a smoke run uses whatever the recipe says: model presets.
REPLACE: dict[str, Any] = {"model": "tiny", "student": "tiny"}

#: ModelConfig keys that set the network's size; dropped from `model_overrides` and
#: `student_overrides` so the tiny preset's consistent shape is what runs (other keys —
#: MTP depth, rope, routing speed — are kept).
SHAPE_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "v_head_dim", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace",
    "n_group", "topk_group", "max_position_embeddings",
})

#: Decoder layers of the tiny preset: a student built from the teacher's layers keeps the
#: ones the smoke teacher has (at least layer 0).
TINY_LAYERS = 2

#: Where a smoke run's store lives, under the work directory.
NAMESPACE = "smoke"


def shrink(config: Any) -> Any:
    """`config` with every size capped, as a new instance (its validation runs again)."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, int) and not isinstance(value, bool):
            bounded = max(min(value, CAPS.get(f.name, value)), FLOORS.get(f.name, 0))
            if bounded != value:
                changes[f.name] = bounded
        elif f.name in REPLACE:
            changes[f.name] = REPLACE[f.name]
        elif f.name in ("model_overrides", "student_overrides"):
            changes[f.name] = {k: v for k, v in value.items() if k not in SHAPE_KEYS}
        elif f.name == "student_layers" and value:
            changes[f.name] = [i for i in value if i < TINY_LAYERS] or [0]
    return dataclasses.replace(config, **changes)
