"""TOML recipes -> a validated DAG of stage instances.

    [recipe]
    name = "mini_r1"
    seed = 0

    [stages.clean]             # an instance; its type is its name...
    from = "source"            # upstream instance(s): a name, a list, or {slot = name}
    min_words = 20

    [stages.eval_base]
    uses = "eval"              # ...or the type named by `uses`
    from = ["pretrain"]

Every mistake is reported as one sentence naming the file, line and key, and exits 2:
invalid TOML, unknown stage type, unknown or mistyped config key (with a close-match
suggestion), missing upstream, a cycle.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsctl.errors import UserError

RESERVED_KEYS = ("from", "uses", "seed")
RECIPE_KEYS = ("name", "seed", "description")


@dataclass
class StageEntry:
    """One `[stages.NAME]` table, before it is checked against the stage registry."""

    name: str
    type: str
    config: dict[str, Any]
    upstream: list[str] | dict[str, list[str]]
    seed: int | None
    where: str
    """Location for messages, e.g. "recipes/mini_r1.toml:14 [stages.clean]"."""

    def upstream_names(self) -> list[str]:
        if isinstance(self.upstream, dict):
            return [n for names in self.upstream.values() for n in names]
        return list(self.upstream)


@dataclass
class Recipe:
    name: str
    seed: int
    stages: dict[str, StageEntry]
    path: Path | None = None
    description: str = ""
    source_lines: list[str] = field(default_factory=list, repr=False)

    def order(self) -> list[str]:
        """Stage names in a topological order (declaration order among equals)."""
        state: dict[str, str] = {}
        order: list[str] = []

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = " -> ".join([*chain[chain.index(name):], name])
                raise UserError(f"{self.label}: the stages form a cycle: {cycle}")
            state[name] = "visiting"
            for up in self.stages[name].upstream_names():
                visit(up, [*chain, name])
            state[name] = "done"
            order.append(name)

        for name in self.stages:
            visit(name, [])
        return order

    @property
    def label(self) -> str:
        return str(self.path) if self.path else self.name


def _line_of(lines: list[str], table: str, key: str | None = None) -> int | None:
    """1-based line of `[table]` (or of `key = ...` inside it) in the recipe text."""
    header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None or key is None:
        return None if start is None else start + 1
    key_re = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if key_re.match(lines[i]):
            return i + 1
    return start + 1


def parse_override(text: str) -> tuple[list[str], Any]:
    """`stage.key=value` -> (["stage", "key"], value); the value is read as TOML."""
    if "=" not in text:
        raise UserError(f"--set '{text}' must look like stage.key=value")
    path, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words are strings: --set source.world=default
    return [p.strip() for p in path.split(".")], value


def _as_names(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UserError(f"{where}: 'from' must be a stage name, a list of names, or a table slot = name")


def _parse_upstream(value: Any, where: str) -> list[str] | dict[str, list[str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        return {slot: _as_names(v, where) for slot, v in value.items()}
    return _as_names(value, where)


def load_recipe(path: Path | str, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    return parse_recipe(data, path=path, overrides=overrides, text=text)


def parse_recipe(data: dict[str, Any], path: Path | None = None, overrides: list[str] = (),
                 text: str = "") -> Recipe:
    lines = text.splitlines()
    label = str(path) if path else "recipe"

    def where(table: str, key: str | None = None) -> str:
        line = _line_of(lines, table, key)
        return f"{label}:{line} [{table}]" if line else f"{label} [{table}]"

    unknown_tables = sorted(set(data) - {"recipe", "stages"})
    if unknown_tables:
        raise UserError(f"{label}: unknown table [{unknown_tables[0]}]; a recipe has [recipe] and [stages.NAME] tables")
    head = data.get("recipe", {})
    for key in head:
        if key not in RECIPE_KEYS:
            close = difflib.get_close_matches(key, RECIPE_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{where('recipe', key)}: unknown key '{key}'{hint}")
    stages_raw = data.get("stages", {})
    if not stages_raw:
        raise UserError(f"{label}: no stages; add a [stages.NAME] table")

    for text_override in overrides:
        keys, value = parse_override(text_override)
        if len(keys) == 1 and keys[0] in ("seed", "name"):
            head[keys[0]] = value
            continue
        if len(keys) != 2 or keys[0] not in stages_raw:
            known = ", ".join(stages_raw)
            raise UserError(f"--set '{text_override}': expected STAGE.KEY=VALUE with STAGE one of: {known}")
        stages_raw[keys[0]][keys[1]] = value

    seed = head.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{where('recipe', 'seed')}: 'seed' must be an integer, got {seed!r}")
    name = head.get("name") or (path.stem if path else "recipe")
    stages: dict[str, StageEntry] = {}
    for stage_name, table in stages_raw.items():
        loc = where(f"stages.{stage_name}")
        if not isinstance(table, dict):
            raise UserError(f"{loc}: a stage must be a table")
        stage_seed = table.get("seed")
        if stage_seed is not None and (not isinstance(stage_seed, int) or isinstance(stage_seed, bool)):
            raise UserError(f"{where(f'stages.{stage_name}', 'seed')}: 'seed' must be an integer")
        stages[stage_name] = StageEntry(
            name=stage_name,
            type=table.get("uses", stage_name),
            config={k: v for k, v in table.items() if k not in RESERVED_KEYS},
            upstream=_parse_upstream(table.get("from"), loc),
            seed=stage_seed,
            where=loc,
        )
    recipe = Recipe(name, seed, stages, path, head.get("description", ""), lines)
    for entry in stages.values():
        for up in entry.upstream_names():
            if up not in stages:
                close = difflib.get_close_matches(up, list(stages), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UserError(f"{where(f'stages.{entry.name}', 'from')}: upstream stage '{up}' is not defined{hint}")
    recipe.order()  # raises on a cycle
    return recipe


def key_location(recipe: Recipe, stage: str, key: str) -> str:
    """`file:line [stages.X]` of a key inside a stage table, for config error messages."""
    line = _line_of(recipe.source_lines, f"stages.{stage}", key)
    return f"{recipe.label}:{line} [stages.{stage}]" if line else f"{recipe.label} [stages.{stage}]"
