from pathlib import Path

from dsctl.cli.recipe_reference import render
from dsctl.configs import config_fields, field_docs
from dsctl.pipeline.stage import StageRegistry

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_readme_is_generated_from_the_current_configs():
    expected = render(StageRegistry.discover())
    actual = (ROOT / "recipes" / "README.md").read_text()
    assert actual == expected, "regenerate it: python -m dsctl.cli.recipe_reference > recipes/README.md"


def test_every_stage_config_field_is_documented():
    undocumented = [f"{spec.name}.{f.name}" for spec in StageRegistry.discover()
                    for f in config_fields(spec.config) if not field_docs(spec.config).get(f.name)]
    assert not undocumented, undocumented


def test_every_stage_has_help_and_a_copy_paste_example():
    for spec in StageRegistry.discover():
        assert spec.help and spec.example.startswith(f"dsctl {spec.name}"), spec.name
