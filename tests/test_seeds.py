"""A recipe at several training seeds: which stages a seed enters, and the combined study."""

import json
import math
import subprocess
from pathlib import Path

import pytest

from dsctl.eval.seeds import combine, markdown
from dsctl.pipeline.recipe import load_recipe
from dsctl.pipeline.runner import plan, with_training_seed
from dsctl.pipeline.stage import StageRegistry

MINI = Path(__file__).resolve().parents[1] / "recipes" / "mini_r1.toml"


def test_a_training_seed_enters_every_stage_from_the_first_checkpoint_on_and_no_data_stage():
    registry = StageRegistry.discover()
    recipe = load_recipe(MINI)
    base = plan(recipe, registry)
    seeded = plan(with_training_seed(recipe, base, 7), registry)
    data = {"source", "clean", "dedup", "decontaminate", "audit", "tokenize"}
    for name, p in seeded.items():
        if name in data:
            assert (p.seed, p.key) == (base[name].seed, base[name].key), name  # shared cache
        else:
            assert p.seed == 7 and p.key != base[name].key, name
    assert with_training_seed(recipe, base, 7).name == "mini_r1@seed7"


def _report(diffs, pass1):
    return {"metrics": {"sft": {"pass@1": pass1[0], "params": 10}, "grpo": {"pass@1": pass1[1], "params": 10}},
            "comparisons": [{"from": "sft", "to": "grpo", "metric": "pass@1", "difference": d, "stderr": 0.02,
                             "problems": 400} for d in diffs]}


def test_combine_keeps_each_seeds_paired_se_beside_the_spread_over_seeds():
    study = combine({2: _report([0.30], [0.4, 0.7]), 0: _report([0.10], [0.5, 0.6]), 1: _report([0.20], [0.45, 0.65])})
    row = study["comparisons"][0]
    assert study["seeds"] == [0, 1, 2]
    assert [r["difference"] for r in row["per_seed"]] == [0.10, 0.20, 0.30]
    assert row["mean"] == pytest.approx(0.2) and row["sd"] == pytest.approx(0.1)
    assert study["metrics"]["grpo"]["pass@1"]["per_seed"] == [0.6, 0.65, 0.7]
    text = markdown(study, "demo")
    assert "| grpo − sft | pass@1 | +0.100 ± 0.020 | +0.200 ± 0.020 | +0.300 ± 0.020 | +0.200 ± 0.100 |" in text
    assert math.isnan(combine({0: _report([0.1], [0.5, 0.6])})["comparisons"][0]["sd"])  # one seed: no spread


@pytest.mark.slow
def test_seeds_runs_a_recipe_at_two_seeds_and_writes_one_study(tmp_path, dsctl_cmd):
    work = tmp_path / "work"
    result = subprocess.run([*dsctl_cmd, "-w", str(work), "seeds", str(MINI), "--seeds", "0,1", "--smoke"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = work / "smoke" / "studies" / "mini_r1-smoke"
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == [0, 1] and (out / "study.md").is_file() and (out / "study.png").is_file()
    assert {(r["from"], r["to"]) for r in study["comparisons"]} >= {("sft", "grpo"), ("rft", "grpo")}
    # the data chain ran once: both seeds' tokenize refs point at one artifact
    refs = [json.loads((work / "smoke" / "refs" / f"mini_r1@seed{s}" / "tokenize.json").read_text())["key"]
            for s in (0, 1)]
    assert refs[0] == refs[1]
    drawn = subprocess.run([*dsctl_cmd, "-w", str(work), "plot", str(out), "--out", str(tmp_path / "s.png")],
                           capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0 and (tmp_path / "s.png").stat().st_size > 0, drawn.stderr
