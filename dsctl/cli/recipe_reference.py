"""recipes/README.md: every stage's keys with type, default and meaning, generated from the
config dataclasses so it cannot drift from the code (a test checks it is current).

    python -m dsctl.cli.recipe_reference > recipes/README.md
"""

from __future__ import annotations

import dataclasses
import typing

from dsctl.configs import config_fields, default_of, field_docs, type_name
from dsctl.pipeline.stage import StageRegistry

HEADER = """# Recipe reference

A recipe is a TOML file: a `[recipe]` table (`name`, `seed`, `description`) and one
`[stages.NAME]` table per stage instance. A table's stage type is its name, or the type
named by `uses`, so one type can appear several times. Reserved keys in a stage table:

| key | meaning |
| --- | --- |
| `from` | upstream stage(s): a name, a list of names, or a table `{slot = "name"}` |
| `uses` | the stage type, when the table's name is not a type |
| `seed` | this stage's seed (default: the recipe's) |

Every other key is a config field of the stage type, listed below with its default.
Override any of them from the command line: `dsctl run RECIPE --set STAGE.KEY=VALUE`.

This file is generated: `python -m dsctl.cli.recipe_reference > recipes/README.md`.
"""


def _default_text(f: dataclasses.Field) -> str:
    value = default_of(f)
    if value is dataclasses.MISSING:
        return "(required)"
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text.replace("|", "\\|")


def render(registry: StageRegistry) -> str:
    parts = [HEADER]
    for spec in registry:
        parts.append(f"\n## `{spec.name}`\n\n{spec.help}\n")
        slots = ", ".join(f"`{slot}` ({inp.kind}{', many' if inp.many else ''}{', optional' if inp.optional else ''})"
                          for slot, inp in spec.inputs.items()) or "none"
        parts.append(f"Inputs: {slots}. Output: {spec.output}.\n")
        if spec.example:
            parts.append(f"\n```bash\n{spec.example}\n```\n")
        parts.append("\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n")
        docs, hints = field_docs(spec.config), typing.get_type_hints(spec.config)
        for f in config_fields(spec.config):
            doc = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
            type_text = type_name(hints[f.name]).replace('|', 'or')
            parts.append(f"| `{f.name}` | {type_text} | `{_default_text(f)}` | {doc} |\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(StageRegistry.discover()), end="")
