from pathlib import Path

import pytest

from dsctl.pipeline.recipe import load_recipe
from dsctl.pipeline.runner import plan
from dsctl.pipeline.stage import StageRegistry

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


CONTROLS = {"sft_more", "rft", "teacher_more"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate_and_carry_the_controls(path):
    plans = plan(load_recipe(path), StageRegistry.discover())
    checkpoints = plans["eval"].upstream["checkpoint"]
    assert [c for c in checkpoints if c not in CONTROLS] == ["pretrain", "sft", "grpo", "distill"]
    assert CONTROLS <= set(checkpoints)
    grpo, rft = plans["grpo"].config, plans["rft_samples"].config
    # RFT samples grpo's own pool with grpo's budget: its prompts x its group size, at its temperature
    assert plans["rft_samples"].upstream == {"checkpoint": ["sft"]} and rft.problem_seed_offset == 0
    assert rft.train_problems == grpo.max_steps * grpo.prompts_per_step and rft.samples_per_prompt == grpo.group_size
    assert (rft.temperature, rft.top_p, rft.difficulty, rft.train_split) == (grpo.temperature, grpo.top_p,
                                                                               grpo.difficulty, grpo.train_split)
    assert plans["rft"].upstream == {"checkpoint": ["sft"], "data": ["rft_samples"]}
    # the teacher fine-tuned on distill's samples with distill's schedule
    teacher, distill = plans["teacher_more"].config, plans["distill"].config
    assert plans["teacher_more"].upstream == {"checkpoint": ["grpo"], "data": ["rejection_sample"]}
    assert (teacher.max_steps, teacher.lr, teacher.batch_size) == (distill.max_steps, distill.lr, distill.batch_size)
    assert plans["sft_more"].config.train_problems == plans["sft"].config.train_problems


def test_mini_r1_runs_the_whole_chain():
    plans = plan(load_recipe(RECIPES[[p.stem for p in RECIPES].index("mini_r1")]), StageRegistry.discover())
    types = [p.spec.name for p in plans.values()]
    assert types == ["source", "clean", "dedup", "decontaminate", "audit", "tokenize", "pretrain", "extend", "sft",
                     "grpo", "sft", "rejection_sample", "sft", "rejection_sample", "distill", "sft", "eval"]
    assert plans["pretrain"].config.precision == "fp8" and plans["pretrain"].config.mtp_depth >= 1
