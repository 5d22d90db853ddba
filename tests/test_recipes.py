from pathlib import Path

import pytest

from dsctl.recipe import load_recipe
from dsctl.runner import plan
from dsctl.stage import StageRegistry

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path):
    plans = plan(load_recipe(path), StageRegistry.discover())
    checkpoints = plans["eval"].upstream["checkpoint"]
    assert [c for c in checkpoints if c != "sft_more"] == ["pretrain", "sft", "grpo", "distill"]


def test_mini_r1_runs_the_whole_chain():
    plans = plan(load_recipe(RECIPES[[p.stem for p in RECIPES].index("mini_r1")]), StageRegistry.discover())
    types = [p.spec.name for p in plans.values()]
    assert types == ["source", "clean", "dedup", "decontaminate", "audit", "tokenize", "pretrain", "extend", "sft",
                     "grpo", "sft", "rejection_sample", "distill", "eval"]
    # the same-time control: more sft on the same scarce worked solutions instead of grpo
    assert plans["sft_more"].config.train_problems == plans["sft"].config.train_problems
    assert plans["pretrain"].config.precision == "fp8" and plans["pretrain"].config.mtp_depth >= 1
