"""The `dsctl` command line: `app.py` builds the typer app (a subcommand per stage, found
through the stage registry), `commands.py` the recipe, store and model commands,
`plots.py` their figures, `recipe_reference.py` the generated recipes/README.md."""


def main(argv: list[str] | None = None) -> None:
    """The console script's entry point (`dsctl = "dsctl.cli:main"`), importing the app
    only when called so `import dsctl.cli` stays cheap."""
    from dsctl.cli.app import main as run

    run(argv)
