"""Smoke mode (dsctl/pipeline/smoke.py): one table shrinks any recipe; every shipped recipe's whole
chain runs with --smoke in a store of its own."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsctl.configs import config_fields
from dsctl.pipeline.recipe import load_recipe
from dsctl.pipeline.runner import plan
from dsctl.pipeline.smoke import CAPS, FLOORS, REPLACE, SHAPE_KEYS, shrink
from dsctl.pipeline.stage import StageRegistry

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
REGISTRY = StageRegistry.discover()
ESTIMATE = Path(__file__).resolve().parents[1] / "benchmarks" / "estimate_recipe.py"


def test_every_field_the_smoke_table_names_is_a_stage_config_field():
    fields = {f.name for name in REGISTRY.names() for f in config_fields(REGISTRY.get(name).config)}
    named = set(CAPS) | set(FLOORS) | set(REPLACE) | {"model_overrides", "student_overrides", "student_layers"}
    stale = named - fields
    assert not stale, f"the smoke table names fields no stage has: {sorted(stale)}"


def test_shrink_caps_sizes_and_keeps_everything_else():
    from stages.distill import DistillConfig
    from stages.pretrain import PretrainConfig

    cfg = PretrainConfig(max_steps=6000, batch_size=64, seq_len=1024, lr=1.5e-3, precision="fp8", model="100m",
                         model_overrides={"hidden_size": 768, "rope_theta": 50000.0}, warmup_steps=0)
    small = shrink(cfg)
    assert (small.max_steps, small.batch_size, small.seq_len, small.model) == (4, 4, 128, "tiny")
    assert small.model_overrides == {"rope_theta": 50000.0}  # shape keys go, others stay
    assert (small.lr, small.precision, small.warmup_steps, small.mtp_depth) == (1.5e-3, "fp8", 0, 1)
    assert shrink(small) == small  # a smoke config is its own smoke config
    student = shrink(DistillConfig(student_layers=[0, 3, 7], train_problems=0))
    assert student.student_layers == [0] and student.train_problems == FLOORS["train_problems"]
    assert not SHAPE_KEYS & set(shrink(DistillConfig()).student_overrides)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_smoke_plans_differ_from_the_real_ones_and_every_size_is_capped(path):
    recipe = load_recipe(path)
    real, smoke = plan(recipe, REGISTRY), plan(recipe, REGISTRY, smoke=True)
    assert set(real) == set(smoke)
    for name, p in smoke.items():
        assert p.key != real[name].key
        for f in dataclasses.fields(p.config):
            value = getattr(p.config, f.name)
            if f.name in CAPS and isinstance(value, int):
                assert value <= max(CAPS[f.name], FLOORS.get(f.name, 0)), (name, f.name, value)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_runs_its_whole_chain_with_smoke(path, tmp_path, dsctl_cmd):
    """CI's guard that no recipe rots: the real code path of every stage, tiny sizes."""
    work = tmp_path / "work"
    result = subprocess.run([*dsctl_cmd, "-w", str(work), "run", str(path), "--smoke"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name = load_recipe(path).name
    refs = sorted(p.stem for p in (work / "smoke" / "refs" / name).glob("*.json"))
    assert refs == sorted(load_recipe(path).stages)
    assert not any((work / "objects").iterdir()), "a smoke run wrote into the real store"
    report = json.loads((work / "smoke" / "refs" / name / "eval.json").read_text())
    assert report["config"]["eval_problems"] <= CAPS["eval_problems"]
    status = subprocess.run([*dsctl_cmd, "-w", str(work), "status", str(path), "--smoke"],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "missing" not in status.stdout and "cached" in status.stdout
    # the estimate gpu_check.sh prints scales each measured stage to the recipe's full work
    estimate = subprocess.run([sys.executable, str(ESTIMATE), str(path), "--measured", str(work / "smoke")],
                              capture_output=True, text=True, timeout=120)
    assert estimate.returncode == 0, estimate.stderr[-2000:]
    listed = {line.split()[0] for line in estimate.stdout.splitlines()[2:]}
    assert listed == set(load_recipe(path).stages) | {"whole"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_the_flop_estimate_covers_every_training_and_decoding_stage(path):
    result = subprocess.run([sys.executable, str(ESTIMATE), str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {line.split()[0] for line in result.stdout.splitlines()[2:]}
    kinds = {p.spec.name for p in plan(load_recipe(path), REGISTRY).values()}
    expected = {n for n, p in plan(load_recipe(path), REGISTRY).items()
                if p.spec.name in {"pretrain", "extend", "sft", "grpo", "distill", "rejection_sample", "eval"}}
    assert expected <= listed and ("data" in listed) == ("source" in kinds)
