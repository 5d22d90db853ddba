"""Typed config dataclasses: field docs, validation and coercion of user values.

Every stage config is a plain `@dataclass` whose fields carry their documentation as a
string literal right below the field, the way attribute docstrings read in Sphinx:

    @dataclass
    class CleanConfig:
        min_words: int = 20
        \"\"\"Documents with fewer words are rejected.\"\"\"

`field_docs` reads those strings back from the source with `ast`, so the docs live
next to the defaults and feed `--help`, `recipes/README.md` and error messages.

Stage configs compose shared pieces by inheritance and change a piece's defaults with
`stage_defaults`, so every field is declared, and documented, exactly once:

    @dataclass
    @stage_defaults(max_steps=200, lr=1e-3)
    class SFTConfig(TaskConfig, LMTrainConfig):
        train_problems: int = 4000
        \"\"\"Worked solutions to train on.\"\"\"
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, Callable, Literal, Union

from dsctl.errors import UserError


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written below it (inherited fields included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def stage_defaults(**values: Any) -> Callable[[type], type]:
    """Class decorator, placed under `@dataclass`: new defaults for inherited fields.

    The fields keep the piece's type, documentation and position; only the default
    changes. Naming a field the class does not inherit, or one it declares itself, is an
    error at import time, so a renamed piece field cannot silently stop applying.
    """
    def apply(cls: type) -> type:
        inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if name not in inherited or name in annotations:
                raise TypeError(f"{cls.__name__}: stage_defaults names {name!r}, which is not a field it inherits")
            annotations[name] = hints[name]
            mutable = isinstance(value, (list, dict, set))
            default = dataclasses.field(default_factory=lambda v=value: copy.deepcopy(v)) if mutable else value
            setattr(cls, name, default)
        cls.__annotations__ = annotations
        return cls

    return apply


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def type_name(tp: Any) -> str:
    """A short human-readable name of a field type, e.g. `int | none`."""
    return _type_name(tp)


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp` or raise _Mismatch. Only lossless conversions."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        seq = [_coerce(v, item) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        key_t, val_t = args if args else (Any, Any)
        return {_coerce(k, key_t): _coerce(v, val_t) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def build_config(cls: type, values: dict[str, Any], where: str | Callable[[str | None], str]) -> Any:
    """Instantiate config `cls` from user `values`, failing with one clear sentence.

    `where` names the source for messages, e.g. "recipes/mini_r1.toml:7 [stages.clean]",
    or is a function of the offending key that returns such a location.
    Unknown keys get a close-match suggestion; mistyped values name the expected type.
    """
    locate = where if callable(where) else (lambda key: where)
    fields = {f.name: f for f in config_fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            raise UserError(f"{locate(key)}: unknown key '{key}'{hint}; known keys: {known}")
        try:
            kwargs[key] = _coerce(value, hints[key])
        except _Mismatch:
            raise UserError(
                f"{locate(key)}: '{key}' must be {type_name(hints[key])}, got {value!r}"
            ) from None
    missing = [n for n, f in fields.items() if default_of(f) is dataclasses.MISSING and n not in kwargs]
    if missing:
        raise UserError(f"{locate(None)}: missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{locate(None)}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """The fully resolved config (defaults filled in) as JSON-ready data."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in config_fields(type(config))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    return value
