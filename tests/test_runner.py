import json

import pytest

from dsctl.errors import StageFailed, UserError
from dsctl.pipeline.recipe import parse_recipe
from dsctl.pipeline.runner import Runner, plan, stage_state
from dsctl.pipeline.stage import StageRegistry
from dsctl.pipeline.store import Store
from dsctl.pipeline.testing import run_stage
from dsctl.progress import Reporter
from tests import fixture_stages as fx

REGISTRY = StageRegistry(fx.STAGES)


def _recipe(**overrides):
    data = {
        "recipe": {"name": "demo", "seed": 1},
        "stages": {
            "nums": {"uses": "t_numbers", "count": 12},
            "up": {"uses": "t_upper", "from": "nums"},
            "up2": {"uses": "t_upper", "from": "up", "suffix": "?"},
            "side": {"uses": "t_upper", "from": "nums", "suffix": "!"},
        },
    }
    for path, value in overrides.items():
        stage, key = path.split(".")
        data["stages"][stage][key] = value
    return parse_recipe(data)


def _run(store, recipe, **kw):
    return Runner(store, Reporter(quiet=True), recipe_name=recipe.name).execute(plan(recipe, REGISTRY), **kw)


def test_second_run_is_all_hits_with_identical_keys(tmp_path):
    store = Store(tmp_path)
    first = _run(store, _recipe())
    second = _run(store, _recipe())
    assert [r.state for r in first] == ["ran"] * 4
    assert [r.state for r in second] == ["hit"] * 4
    assert [r.key for r in first] == [r.key for r in second]


def test_changing_one_value_reruns_only_that_stage_and_descendants(tmp_path):
    store = Store(tmp_path)
    _run(store, _recipe())
    results = {r.name: r.state for r in _run(store, _recipe(**{"up.suffix": "#"}))}
    assert results == {"nums": "hit", "up": "ran", "up2": "ran", "side": "hit"}


def test_seed_is_part_of_the_key(tmp_path):
    recipe = _recipe()
    keys = {n: p.key for n, p in plan(recipe, REGISTRY).items()}
    recipe.seed = 2
    assert all(keys[n] != p.key for n, p in plan(recipe, REGISTRY).items())


def test_same_type_can_appear_twice_with_separate_artifacts(tmp_path):
    store = Store(tmp_path)
    _run(store, _recipe())
    up2 = store.resolve("demo:up2").path
    side = store.resolve("demo:side").path
    text_up2 = (up2 / "data" / "part-00000.jsonl").read_text()
    assert text_up2.splitlines()[0].endswith('?"}') and "!" in (side / "data" / "part-00000.jsonl").read_text()


def test_until_and_force(tmp_path):
    store = Store(tmp_path)
    assert [r.name for r in _run(store, _recipe(), until="up")] == ["nums", "up"]
    assert not store.has(plan(_recipe(), REGISTRY)["up2"].key)
    results = {r.name: r.state for r in _run(store, _recipe(), force={"up"})}
    assert results == {"nums": "hit", "up": "ran", "up2": "ran", "side": "ran"}


def test_failing_stage_keeps_finished_artifacts_and_next_run_resumes(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StageFailed, match="asked to fail"):
        _run(store, _recipe(**{"up.fail": True}))
    plans = plan(_recipe(**{"up.fail": True}), REGISTRY)
    assert store.has(plans["nums"].key)
    assert stage_state(store, plans["up"].key) == "failed"
    results = {r.name: r.state for r in _run(store, _recipe())}
    assert results["nums"] == "hit" and results["up"] == "ran"


def test_stage_refuses_a_damaged_input(tmp_path):
    store = Store(tmp_path)
    _run(store, _recipe(), until="nums")
    nums = store.resolve("demo:nums")
    shard = nums.path / "data" / "part-00000.jsonl"
    shard.write_text(shard.read_text().replace("row 0", "row X"))
    with pytest.raises(UserError, match="refuses its input demo:nums .* damaged .*sha256 mismatch"):
        _run(store, _recipe(), until="up")


def test_kind_mismatch_and_missing_slots_are_user_errors():
    bad = {"stages": {"slow": {"uses": "t_slow"}, "up": {"uses": "t_upper", "from": "slow"}}}
    with pytest.raises(UserError, match="'slow' gives a report, but t_upper takes corpus"):
        plan(parse_recipe(bad), REGISTRY)
    missing = {"stages": {"up": {"uses": "t_upper"}}}
    with pytest.raises(UserError, match="needs a 'corpus' input"):
        plan(parse_recipe(missing), REGISTRY)


def test_explicit_slot_table(tmp_path):
    data = {"stages": {"nums": {"uses": "t_numbers"}, "up": {"uses": "t_upper", "from": {"corpus": "nums"}}}}
    plans = plan(parse_recipe(data), REGISTRY)
    assert plans["up"].upstream == {"corpus": ["nums"]}


def test_run_stage_helper_and_manifest_contents(tmp_path):
    art = run_stage(fx.NUMBERS, {"count": 3}, workdir=tmp_path, seed=5)
    assert art.manifest["metrics"] == {"rows": 3}
    assert art.manifest["seed"] == 5 and art.manifest["config"] == {"count": 3, "prefix": "row"}
    up = run_stage(fx.UPPER, {}, {"corpus": [art]}, workdir=tmp_path)
    assert up.manifest["inputs"] == {"corpus": [art.key]}
    rows = [json.loads(line) for line in (up.path / "data" / "part-00000.jsonl").read_text().splitlines()]
    assert rows[0]["text"].startswith("ROW 0")


def test_stage_progress_reads_the_last_logged_step_of_an_unfinished_stage(tmp_path):
    from dsctl.pipeline.runner import stage_progress

    store = Store(tmp_path / "work")
    key = "ab" * 32
    assert stage_progress(store, key, 240) == ""  # nothing staged
    metrics = store.staging(key).artifact / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    rows = [{"step": s, "loss": 3.0 - s / 100} for s in range(1, 121)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 121, "lo')  # killed mid-write
    assert stage_progress(store, key, 240) == "step 120/240, loss 1.8"
    assert stage_progress(store, key) == "step 120, loss 1.8"
