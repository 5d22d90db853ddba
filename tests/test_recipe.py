import pytest

from dsctl.configs import build_config
from dsctl.errors import UserError
from dsctl.pipeline.recipe import load_recipe, parse_override
from dsctl.pipeline.runner import plan
from dsctl.pipeline.stage import StageRegistry
from tests import fixture_stages as fx

REGISTRY = StageRegistry(fx.STAGES)


def _load(tmp_path, text, overrides=()):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return plan(load_recipe(path, list(overrides)), REGISTRY)


@pytest.mark.parametrize("text, message", [
    ("[stages.a\nuses = 1\n", r"r.toml: invalid TOML: .*line 1"),
    ('[stages.a]\nuses = "t_numbrs"\n',
     r"r.toml:1 \[stages.a\]: unknown stage type 't_numbrs' \(did you mean 't_numbers'\?\)"),
    ('[stages.a]\nuses = "t_numbers"\n\ncoutn = 3\n',
     r"r.toml:4 \[stages.a\]: unknown key 'coutn' \(did you mean 'count'\?\)"),
    ('[stages.a]\nuses = "t_numbers"\ncount = "many"\n', r"r.toml:3 \[stages.a\]: 'count' must be int, got 'many'"),
    ('[stages.a]\nuses = "t_upper"\nfrom = "nope"\n', r"r.toml:3 \[stages.a\]: upstream stage 'nope' is not defined"),
    ('[stages.a]\nuses = "t_upper"\nfrom = "b"\n[stages.b]\nuses = "t_upper"\nfrom = "a"\n', r"cycle: a -> b -> a"),
    ('[recipe]\nnmae = "x"\n[stages.a]\nuses = "t_numbers"\n', r"unknown key 'nmae' \(did you mean 'name'\?\)"),
    ('[stage.a]\nuses = "t_numbers"\n', r"unknown table \[stage\]"),
])
def test_bad_recipes_give_one_clear_sentence(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        _load(tmp_path, text)


def test_set_overrides_values_and_types(tmp_path):
    plans = _load(tmp_path, '[stages.a]\nuses = "t_numbers"\n', ["a.count=7", "a.prefix=hello", "seed=9"])
    assert plans["a"].config.count == 7 and plans["a"].config.prefix == "hello" and plans["a"].seed == 9
    with pytest.raises(UserError, match="STAGE.KEY=VALUE"):
        _load(tmp_path, '[stages.a]\nuses = "t_numbers"\n', ["b.count=7"])


def test_parse_override_reads_toml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=word") == (["a", "b"], "word")


def test_build_config_coerces_losslessly():
    cfg = build_config(fx.SlowConfig, {"steps": 3, "sleep": 1}, "here")
    assert cfg.sleep == 1.0 and isinstance(cfg.sleep, float)
    with pytest.raises(UserError, match="'steps' must be int, got 2.5"):
        build_config(fx.SlowConfig, {"steps": 2.5}, "here")
