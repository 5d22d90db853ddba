"""The `dsctl` command line: recipe commands, store commands, and one command per stage.

Stage subcommands are generated from the stage registry: every config field becomes an
option (`--min-words 30`), so `dsctl clean --help` documents the stage from its own
dataclass. Bad input exits 2 with one sentence; a failing stage exits 1; `--debug`
shows tracebacks.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import typer
from rich.console import Console
from rich.markup import escape

from dsctl import __version__
from dsctl.cli import commands
from dsctl.configs import config_fields, default_of, field_docs, type_name
from dsctl.errors import StageFailed, UserError
from dsctl.pipeline.recipe import parse_override
from dsctl.pipeline.runner import Runner, single_stage_plan
from dsctl.pipeline.stage import StageRegistry, StageSpec
from dsctl.pipeline.store import Artifact, Store
from dsctl.progress import Reporter

app = typer.Typer(
    name="dsctl",
    help=(
        "Build a DeepSeek-V3/R1-style model end to end: clean, dedup, tokenize, pretrain, "
        "extend, sft, grpo, rejection-sample, distill, eval.\n\n"
        "Run the whole default pipeline on a laptop CPU:\n\n"
        "    dsctl run recipes/mini_r1.toml\n\n"
        "Reruns are cache hits; a killed stage resumes where it stopped."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"dsctl {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", "-w", help="Store root. Default: $DSCTL_WORKDIR, else ./work.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings, errors and results."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    root = workdir or Path(os.environ.get("DSCTL_WORKDIR", "work"))
    ctx.obj = commands.Session(Store(root), Reporter(quiet=quiet), debug)


commands.register(app)


# -- stage subcommands ------------------------------------------------------------------

def _cli_type(tp: Any) -> Any | None:
    """The option type typer can parse for a field type, or None (then only --set)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _cli_type(args[0]) if len(args) == 1 else None
    if origin is Literal:
        return str
    if tp in (int, float, str, bool):
        return tp
    return None


def _stage_command(spec: StageSpec):
    docs = field_docs(spec.config)
    hints = typing.get_type_hints(spec.config)
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("from_", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]], default=typer.Option(
            None, "--from",
            help="Input artifact: key, key prefix, recipe:stage or directory; SLOT=REF to name the slot. Repeatable.")),
        inspect.Parameter("ckpt", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
            None, "--ckpt", help="Checkpoint input (shorthand for --from checkpoint=REF).")),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]], default=typer.Option(
            None, "--set", help="Config override KEY=VALUE (TOML value). Repeatable.")),
        inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
            0, "--seed", help="Random seed.")),
        inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--force", help="Rebuild even if the artifact is cached.")),
    ]
    if spec.argument:
        params.insert(1, inspect.Parameter(
            f"cfg_{spec.argument}", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[str],
            default=typer.Argument(None, help=docs.get(spec.argument, ""), show_default=False)))
    option_fields: list[str] = [spec.argument] if spec.argument else []
    for f in config_fields(spec.config):
        if f.name == spec.argument:
            continue
        cli_t = _cli_type(hints[f.name])
        if cli_t is None:
            continue
        default = default_of(f)
        shown = "" if default is inspect.Parameter.empty else f" [default: {default!r}]"
        help_text = f"{docs.get(f.name, '')} ({type_name(hints[f.name])}){shown}"
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if cli_t is bool else [flag]
        params.append(inspect.Parameter(
            f"cfg_{f.name}", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[cli_t],
            default=typer.Option(None, *decls, help=help_text, show_default=False),
        ))
        option_fields.append(f.name)

    def command(ctx: typer.Context, **kwargs: Any) -> None:
        session: commands.Session = ctx.obj
        values = {name: kwargs[f"cfg_{name}"] for name in option_fields if kwargs[f"cfg_{name}"] is not None}
        for text in kwargs["set_"] or []:
            keys, value = parse_override(text)
            values[keys[-1]] = value
        inputs = [_parse_from(session.store, spec, ref) for ref in kwargs["from_"] or []]
        if kwargs["ckpt"]:
            inputs.append(("checkpoint" if "checkpoint" in spec.inputs else None,
                           session.store.resolve(kwargs["ckpt"], "checkpoint")))
        p = single_stage_plan(spec, values, inputs, kwargs["seed"], where=f"dsctl {spec.name}")
        runner = Runner(session.store, session.reporter, recipe_name="adhoc", debug=session.debug)
        runner.execute({p.name: p}, force={p.name} if kwargs["force"] else set())
        print(session.store.object_path(p.key))

    command.__signature__ = inspect.Signature(params)
    command.__name__ = spec.name
    help_text = spec.help or spec.name
    if spec.example:
        help_text += f"\n\nExample:\n\n    {spec.example}"
    return command, help_text


def _parse_from(store: Store, spec: StageSpec, ref: str) -> tuple[str | None, Artifact]:
    slot, _, target = ref.partition("=") if "=" in ref else (None, "", ref)
    if slot is not None and slot not in spec.inputs:
        raise UserError(f"--from {ref}: {spec.name} has no input slot '{slot}'; slots: {', '.join(spec.inputs)}")
    kind = spec.inputs[slot].kind if slot else (
        next(iter(spec.inputs.values())).kind if len(spec.inputs) == 1 else None)
    return slot, store.resolve(target, None if kind == "any" else kind)


def _add_stage_commands(registry: StageRegistry) -> None:
    for spec in registry:
        command, help_text = _stage_command(spec)
        app.command(name=spec.name, help=help_text, rich_help_panel="Stages")(command)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    err = Console(stderr=True)
    try:
        _add_stage_commands(StageRegistry.discover())
        # Without standalone mode click returns the code of a typer.Exit instead of exiting.
        code = app(args=argv, prog_name="dsctl", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except (UserError, StageFailed) as exc:
        if debug:
            err.print_exception()
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        if isinstance(exc, StageFailed) and not debug:
            err.print("[dim]run again with --debug for the traceback; the next `dsctl run` resumes this stage[/]")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]; finished artifacts are kept and the next run resumes")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        if _is_usage_error(exc):
            exc.show()
            sys.exit(2)
        raise


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error (unknown option, missing argument): shown as one message.

    Recent typer releases vendor click as `typer._click`, whose exceptions are not
    `click.ClickException`s, so the class is looked up in both places.
    """
    import click

    classes: list[type] = [click.exceptions.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        classes.append(VendoredClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(classes))


if __name__ == "__main__":
    main()
