from pathlib import Path

import pytest

from dsctl.recipe import load_recipe
from dsctl.runner import plan
from dsctl.stage import StageRegistry

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path):
    plans = plan(load_recipe(path), StageRegistry.discover())
    assert "eval" in plans and plans["eval"].upstream["checkpoint"] == ["pretrain", "sft", "grpo", "distill"]


def test_mini_r1_runs_the_whole_chain():
    plans = plan(load_recipe(RECIPES[[p.stem for p in RECIPES].index("mini_r1")]), StageRegistry.discover())
    types = [p.spec.name for p in plans.values()]
    assert types == ["source", "clean", "dedup", "decontaminate", "audit", "tokenize", "pretrain", "extend", "sft",
                     "grpo", "rejection_sample", "distill", "eval"]
    assert plans["pretrain"].config.precision == "fp8" and plans["pretrain"].config.mtp_depth >= 1
