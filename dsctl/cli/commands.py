"""The recipe and store commands of the `dsctl` CLI: run, status, show, ls, verify, gc,
export (a checkpoint as a Hugging Face model directory) and plot (eval reports or
training curves into a PNG).

`register` adds them to the typer app in `dsctl.cli`, whose callback hands each one a
`Session` (the store, the reporter, the debug flag) as `ctx.obj`. The per-stage
subcommands are not here: `dsctl.cli` generates them from the stage registry.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dsctl.configs import config_to_dict
from dsctl.errors import UserError
from dsctl.pipeline.recipe import load_recipe
from dsctl.pipeline.runner import Runner, StagePlan, failure_message, headline, plan, stage_progress, stage_state
from dsctl.pipeline.smoke import NAMESPACE
from dsctl.pipeline.stage import StageRegistry
from dsctl.pipeline.store import Store, verify_dir
from dsctl.progress import Reporter

OVERRIDE_HELP = "Override a recipe value: STAGE.KEY=VALUE (TOML value), or seed=N. Repeatable."
SHOWN_COMPLETIONS = 3
"""Completions `dsctl show` prints from an artifact's completions.jsonl (the last ones)."""
SMOKE_HELP = ("Every size shrunk (steps, problems, world, model, eval; see dsctl/pipeline/smoke.py): the whole "
              "chain in minutes, in the store under WORKDIR/smoke, apart from real artifacts.")


@dataclass
class Session:
    store: Store
    reporter: Reporter
    debug: bool


def _out() -> Console:
    """Tables on stdout; when piped (CI logs, files), wide enough not to fold every cell."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _load(recipe: Path, overrides: list[str] | None, smoke: bool = False) -> tuple:
    r = load_recipe(recipe, overrides or [])
    return r, plan(r, StageRegistry.discover(), smoke=smoke)


def _store(session: Session, smoke: bool) -> Store:
    """The session's store, or the smoke store inside it."""
    return Store(session.store.root / NAMESPACE) if smoke else session.store


def run(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="TOML recipe, e.g. recipes/mini_r1.toml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    force: Optional[list[str]] = typer.Option(None, "--force", help="Rebuild this stage even if cached. Repeatable."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage (and what it needs)."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Run a recipe: cached stages are skipped, a killed stage resumes.

    Examples:

        dsctl run recipes/mini_r1.toml --set pretrain.max_steps=50 --until pretrain

        dsctl run recipes/gpu_r1.toml --smoke      # check a recipe end to end first
    """
    session: Session = ctx.obj
    store = _store(session, smoke)
    r, plans = _load(recipe, set_, smoke)
    for name in [*(force or []), *([until] if until else [])]:
        if name not in plans:
            raise UserError(f"{recipe}: no stage named '{name}'; stages: {', '.join(plans)}")
    started = time.time()
    results = Runner(store, session.reporter, recipe_name=r.name, debug=session.debug).execute(
        plans, force=set(force or []), until=until)
    hits = sum(res.state == "hit" for res in results)
    session.reporter.info(
        f"[bold]{r.name}[/]{' (smoke)' if smoke else ''}: {len(results)} stage(s), {hits} cached, "
        f"{len(results) - hits} ran, {time.time() - started:.1f}s  (workdir {store.root})")


def status(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="TOML recipe."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    smoke: bool = typer.Option(False, "--smoke", help="The state of the recipe's smoke run (run --smoke)."),
) -> None:
    """Show each stage of a recipe: cached, running, partial, failed or missing — and why.

    Example:

        dsctl status recipes/mini_r1.toml
    """
    session: Session = ctx.obj
    store = _store(session, smoke)
    r, plans = _load(recipe, set_, smoke)
    table = Table(title=f"{r.name} — {store.root}")
    for col in ("stage", "type", "key", "state", "time", "headline", "note"):
        table.add_column(col)
    colors = {"cached": "green", "running": "cyan", "partial": "yellow", "failed": "red", "missing": "dim"}
    for name, p in plans.items():
        state = stage_state(store, p.key)
        seconds, head, note = "", "", ""
        if state == "cached":
            manifest = store.manifest(p.key)
            seconds = f"{manifest.get('seconds', 0):.1f}s"
            head = headline(manifest.get("metrics", {}), manifest.get("headline"))
        elif state == "failed":
            note = failure_message(store, p.key)
        else:
            note = _why_not_cached(store, r.name, p, plans)
            progress = stage_progress(store, p.key, getattr(p.config, "max_steps", None))
            if progress:
                note = f"{'at' if state == 'running' else 'stopped at'} {progress}; {note}"
        table.add_row(name, p.spec.name, p.key[:12], f"[{colors[state]}]{state}[/]", seconds, head, note)
    _out().print(table)


def seeds(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="TOML recipe with an eval stage."),
    seeds_: str = typer.Option("0,1,2", "--seeds", help="Training seeds, comma-separated."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Run a recipe at several training seeds and report every comparison both ways: each
    seed's paired difference ± SE (problem sampling) and the mean ± SD over seeds
    (training variation).

    A training seed changes model init, data order and sampling: every stage that writes a
    checkpoint and everything after one. The data chain keeps the recipe's seed, so all
    seeds share it. Each seed's stages are the recipe `NAME@seedN` (`dsctl show
    mini_r1@seed1:eval`); the combined report goes to WORKDIR/studies/NAME/ (study.md,
    study.json, study.png; `dsctl plot WORKDIR/studies/NAME` redraws it).

    Example:

        dsctl seeds recipes/mini_r1.toml --seeds 0,1,2
    """
    from dsctl.eval import seeds as study
    from dsctl.pipeline.runner import with_training_seed

    session: Session = ctx.obj
    store = _store(session, smoke)
    try:
        chosen = sorted({int(s) for s in seeds_.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds_!r}") from None
    if not chosen:
        raise UserError("--seeds names no seed")
    base, base_plans = _load(recipe, set_, smoke)
    evals = [n for n, p in base_plans.items() if p.spec.name == "eval"]
    if not evals:
        raise UserError(f"{recipe}: no eval stage to combine; add one that compares the checkpoints")
    registry = StageRegistry.discover()
    reports = {}
    started = time.time()
    for seed in chosen:
        seeded = with_training_seed(base, base_plans, seed)
        plans = plan(seeded, registry, smoke=smoke)
        session.reporter.info(f"[bold]{seeded.name}[/]")
        Runner(store, session.reporter, recipe_name=seeded.name, debug=session.debug).execute(plans)
        reports[seed] = json.loads((store.object_path(plans[evals[0]].key) / "report.json").read_text())
    combined = study.combine(reports)
    out = store.root / "studies" / (base.name + ("-smoke" if smoke else ""))
    study.write(combined, out, base.name)
    _out().print(study.markdown(combined, base.name))
    session.reporter.info(f"[bold]{base.name}[/]: {len(chosen)} seeds in {time.time() - started:.1f}s; "
                          f"study in {out}")


def _why_not_cached(store: Store, recipe: str, p: StagePlan, plans: dict[str, StagePlan]) -> str:
    ref = store.get_ref(recipe, p.name)
    if ref is None:
        return "never run"
    if ref["key"] == p.key:
        return "was built, since removed"
    config = config_to_dict(p.config)
    changed = sorted(k for k in set(config) | set(ref["config"]) if config.get(k) != ref["config"].get(k))
    if changed:
        diffs = [f"{k} {ref['config'].get(k)!r}→{config.get(k)!r}" for k in changed[:3]]
        return "config changed: " + ", ".join(diffs)
    if ref.get("seed") != p.seed:
        return f"seed changed: {ref.get('seed')}→{p.seed}"
    if ref.get("inputs") != p.input_keys:
        ups = [n for names in p.upstream.values() for n in names]
        return "upstream changed: " + ", ".join(ups)
    return "stage version changed"


def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Key, key prefix, recipe:stage, or directory."),
    files: bool = typer.Option(False, "--files", help="List every file with its size and sha256."),
) -> None:
    """Show an artifact's manifest: where it came from, its config and metrics, and the
    last completions a grpo run sampled, with their rewards.

    Example:

        dsctl show mini_r1:pretrain
    """
    session: Session = ctx.obj
    artifact = session.store.resolve(ref)
    manifest = dict(artifact.manifest)
    listing = manifest.pop("files", {})
    out = _out()
    out.print(f"[bold]{artifact.label}[/]  {artifact.path}")
    out.print_json(json.dumps(manifest, default=str))
    total = sum(meta["size"] for meta in listing.values())
    out.print(f"{len(listing)} files, {total / 1e6:.2f} MB")
    if files:
        for rel, meta in listing.items():
            out.print(f"  {rel}  {meta['size']:>12,}  {meta['sha256'][:16]}")
    if (artifact.path / "completions.jsonl").is_file():
        _show_completions(out, artifact.path / "completions.jsonl")


def _show_completions(out: Console, path: Path, count: int = SHOWN_COMPLETIONS) -> None:
    """The last `count` sampled completions a run logged (grpo), with their rewards."""
    total, last = 0, deque(maxlen=count)
    with open(path) as fh:
        for line in fh:
            if line.strip():
                total += 1
                last.append(json.loads(line))
    out.print(f"[bold]last {len(last)} of {total} logged completions[/] ({path.name})")
    for row in last:
        verdict = row.get("reason") or ("correct" if row.get("correct") else "wrong")
        if row.get("truncated"):
            verdict += ", truncated"
        out.print(f"step {row['step']}  {row['problem_id']}  reward {row['reward']}  ({verdict})", markup=False,
                  highlight=False)
        for label in ("prompt", "completion"):
            out.print(textwrap.indent(f"{label}: {row[label]}", "    "), markup=False, highlight=False)


def ls(ctx: typer.Context) -> None:
    """List the artifacts in the store, newest last.

    Example:

        dsctl ls
    """
    store: Store = ctx.obj.store
    table = Table(title=str(store.root))
    for col in ("key", "stage", "name", "recipe", "kind", "MB", "finished", "headline"):
        table.add_column(col)
    rows = []
    for key in store.keys():
        m = store.manifest(key)
        size = sum(f["size"] for f in m.get("files", {}).values()) / 1e6
        rows.append((m.get("finished", 0), key, m, size))
    for finished, key, m, size in sorted(rows, key=lambda r: r[0]):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(finished)) if finished else ""
        table.add_row(key[:12], m.get("stage", ""), m.get("name", ""), m.get("recipe", ""), m.get("kind", ""),
                      f"{size:.2f}", when, headline(m.get("metrics", {}), m.get("headline")))
    _out().print(table)


def verify(
    ctx: typer.Context,
    refs: Optional[list[str]] = typer.Argument(None, help="Artifacts to check (default: all)."),
) -> None:
    """Re-hash artifacts against their manifests; exit 1 if any is damaged.

    Example:

        dsctl verify            # the whole store
    """
    store: Store = ctx.obj.store
    targets = [store.resolve(ref) for ref in refs] if refs else [store.artifact(k) for k in store.keys()]
    damaged = 0
    for artifact in targets:
        problems = verify_dir(artifact.path)
        if problems:
            damaged += 1
            ctx.obj.reporter.console.print(f"[red]damaged[/] {artifact.key[:12]} {artifact.label}: "
                                           + "; ".join(problems[:5]))
        else:
            ctx.obj.reporter.info(f"[green]ok[/] {artifact.key[:12]} {artifact.manifest.get('stage', '')}")
    print(f"{len(targets)} checked, {damaged} damaged")
    if damaged:
        raise typer.Exit(1)


def gc(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only say what would be removed."),
) -> None:
    """Remove staging dirs of stages not running, and objects no recipe refers to.

    An object is kept when a recipe's last run used it, or when a kept object was built
    from it.

    Example:

        dsctl gc --dry-run
    """
    store: Store = ctx.obj.store
    keep: set[str] = set()
    todo = [json.loads(p.read_text())["key"] for p in (store.root / "refs").rglob("*.json")]
    while todo:
        key = todo.pop()
        if key in keep or not store.has(key):
            continue
        keep.add(key)
        for keys in store.manifest(key).get("inputs", {}).values():
            todo.extend(keys)
    doomed = [k for k in store.keys() if k not in keep]
    stale = [k for k in store.staging_keys() if not store.is_locked(k)]
    freed = sum(f.stat().st_size for k in doomed for f in store.object_path(k).rglob("*") if f.is_file())
    freed += sum(f.stat().st_size for k in stale for f in store.staging(k).root.rglob("*") if f.is_file())
    verb = "would remove" if dry_run else "removed"
    for key in doomed:
        print(f"{verb} object  {key[:12]} {store.manifest(key).get('stage', '')}")
        if not dry_run:
            store.remove(key)
    for key in stale:
        print(f"{verb} staging {key[:12]}")
        if not dry_run:
            shutil.rmtree(store.staging(key).root, ignore_errors=True)
    print(f"{verb} {len(doomed)} object(s), {len(stale)} staging dir(s), {freed / 1e6:.1f} MB")


def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="A checkpoint: key, key prefix, recipe:stage or directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (created; must be empty)."),
    format: str = typer.Option("hf", "--format", help="Export format; 'hf' = Hugging Face DeepseekV3."),
    check: bool = typer.Option(False, "--check", help="Load the export with transformers and compare logits."),
) -> None:
    """Export a checkpoint as a Hugging Face model directory (config.json, model.safetensors,
    tokenizer files) that `transformers.AutoModelForCausalLM.from_pretrained` opens.

    Example:

        dsctl export mini_r1:distill --out student-hf --check
    """
    from dsctl.train.artifacts import TOKENIZER_FILES

    if format != "hf":
        raise UserError(f"unknown export format '{format}'; supported: hf")
    artifact = ctx.obj.store.resolve(ref, "checkpoint")
    if artifact.kind != "checkpoint" or not (artifact.path / "config.json").is_file():
        raise UserError(f"{ref} is a {artifact.kind}, not a checkpoint")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    weights = [p.name for p in sorted(artifact.path.glob("*.safetensors"))]  # one file, or an import's shards
    for name in ("config.json", *weights, "model.safetensors.index.json", *TOKENIZER_FILES):
        if (artifact.path / name).is_file():
            shutil.copy2(artifact.path / name, out / name)
    print(out)
    if check:
        from dsctl.train.artifacts import check_hf_export

        result = check_hf_export(out)
        print(f"transformers: max |logit diff| = {result['max_logit_diff']:.2e}; "
              f"tokenizer identical: {result['tokenizer_match']}")
        if result["max_logit_diff"] > 1e-3 or result["tokenizer_match"] is False:
            raise UserError(f"transformers does not reproduce dsctl on {out}: {result}")


def plot(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(
        ..., help="Artifacts: eval reports, or training stages' checkpoints; or a seed study's folder."),
    out: Path = typer.Option(Path("dsctl-plot.png"), "--out", "-o", help="PNG file to write."),
) -> None:
    """Plot artifacts into a PNG: eval reports side by side (every metric, every
    checkpoint), or the training curves (loss, val loss, reward, ...) of training stages.

    Example:

        dsctl plot mini_r1:eval --out eval.png
        dsctl plot mini_r1:pretrain mini_r1:sft --out curves.png
        dsctl plot work/studies/mini_r1 --out seeds.png     # a `dsctl seeds` study
    """
    store: Store = ctx.obj.store
    from dsctl.eval import seeds as study

    studies = [Path(ref) for ref in refs if (Path(ref) / study.STUDY_JSON).is_file()]
    if studies:
        if len(studies) != len(refs):
            raise UserError("plot either one seed study or artifacts, not both in one picture")
        for path in studies:
            data = json.loads((path / study.STUDY_JSON).read_text())
            target = out if len(studies) == 1 else out.with_stem(f"{out.stem}-{path.name}")
            if study.plot(data, target, path.name) is None:
                raise UserError("plotting needs matplotlib: pip install matplotlib")
        print(out)
        return
    artifacts = [store.resolve(ref) for ref in refs]
    if all(a.kind == "report" for a in artifacts):
        from dsctl.eval.report import plot_report_files

        plot_report_files([a.path for a in artifacts], out, names=refs)
    elif any(a.kind == "report" for a in artifacts):
        raise UserError("plot either eval reports or training artifacts, not both in one picture")
    else:
        from dsctl.cli.plots import plot_training_curves

        plot_training_curves([(ref, a.path) for ref, a in zip(refs, artifacts)], out)
    print(out)


def _talking_model(store: Store, ref: str):
    """(artifact, model in eval mode, tokenizer, trained context) of a checkpoint to talk to."""
    from dsctl.tokenizer import load_tokenizer, vocabulary_file
    from dsctl.train.artifacts import load_model, trained_context

    artifact = store.resolve(ref, "checkpoint")
    if not (artifact.path / "config.json").is_file() or vocabulary_file(artifact.path) is None:
        raise UserError(f"{ref} ({artifact.path}) is not a checkpoint with a tokenizer "
                        "(config.json, tokenizer.model or tokenizer.json)")
    model = load_model(artifact).eval()
    return artifact, model, load_tokenizer(artifact.path), trained_context(artifact.manifest or {}, model.config)


def chat(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="A checkpoint: key, key prefix, recipe:stage, or an exported HF directory."),
    temperature: float = typer.Option(0.6, "--temperature", help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest reply, in tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first reply (turn t uses seed + t)."),
) -> None:
    """Talk to a checkpoint: each reply streams as it is generated, the <think> trace
    dimmed and the answer plain, with the conversation kept in the chat template.
    Type /reset to forget the history, /exit (or Ctrl-D) to leave. With stdin not a
    terminal, each line is one turn, answered once.

    Example:

        dsctl chat mini_r1:grpo
        echo "What is 36 + 48?" | dsctl chat mini_r1:grpo --temperature 0
    """
    import sys

    from rich.console import Console

    from dsctl.serve.chat import ChatSession, ChatSettings, chat_loop, terminal_lines

    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise UserError("--temperature must be >= 0, --top-p in (0, 1] and --max-new-tokens >= 1")
    artifact, model, tokenizer, context = _talking_model(ctx.obj.store, ref)
    session = ChatSession(model, tokenizer, ChatSettings(temperature, top_p, max_new_tokens, seed), context)
    console = Console(highlight=False)
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[dim]{artifact.label}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"context {context}. /reset clears the history, /exit leaves.[/dim]")
    chat_loop(session, terminal_lines(console) if interactive else sys.stdin, console, interactive)


def serve(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="A checkpoint: key, key prefix, recipe:stage, or an exported HF directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    model_name: str = typer.Option("", "--model-name", help="The name clients ask for (default: the ref)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Requests decoded together at most."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens",
                                       help="Longest reply, in tokens, when a request gives no max_tokens."),
    speculative: bool = typer.Option(True, "--speculative/--no-speculative",
                                     help="Greedy requests decode with MTP drafts (checkpoints with MTP)."),
) -> None:
    """Serve a checkpoint over an OpenAI-compatible HTTP API (FastAPI + uvicorn):
    /v1/chat/completions and /v1/completions (streaming included), /v1/models, /health.
    Concurrent requests share one decode loop (continuous batching); greedy requests on a
    checkpoint with MTP modules decode speculatively (same answer, fewer steps).

    Example:

        dsctl serve mini_r1:grpo --port 8000
        curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"model": "mini_r1:grpo", "messages": [{"role": "user", "content": "What is 36 + 48?"}]}'
    """
    try:
        import uvicorn
    except ImportError:
        raise UserError("dsctl serve needs FastAPI and uvicorn: pip install 'dsctl[serve]'") from None
    from dsctl.serve.app import create_app

    _, model, tokenizer, context = _talking_model(ctx.obj.store, ref)
    app = create_app(model, tokenizer, model_name or ref, context, max_new_tokens, max_batch, speculative)
    print(f"serving {model_name or ref} on http://{host}:{port}/v1 (context {context})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def score(
    ctx: typer.Context,
    problems: str = typer.Argument(..., help="The problem set: key, key prefix, recipe:stage, or directory."),
    completions: Path = typer.Argument(..., help="JSONL rows with `completion` and the problem's `id` "
                                                 "(or `problem_id`, or its `prompt`)."),
    limit: int = typer.Option(50, help="Rows to list (every row is counted)."),
) -> None:
    """Score completions against a problem set with its verifier, before any training:
    each row's reward, what was read as its answer, and why a zero is a zero (no answer
    found, wrong, verifier error with its traceback). grpo's completions.jsonl works as is.

    Example:

        dsctl score my_r1:problems tries.jsonl
    """
    from collections import Counter

    from dsctl.data.corpus import ReadStats, iter_rows
    from dsctl.tasks.problem_set import ProblemSet, score_rows

    session: Session = ctx.obj
    problem_set = ProblemSet(session.store.resolve(problems).path)
    if not completions.is_file():
        raise UserError(f"{completions}: no such file")
    stats = ReadStats()
    records = score_rows(problem_set, iter_rows([completions], stats, text_field="completion"))
    out = _out()
    table = Table(title=f"{completions.name} against {problem_set.name} ({problem_set.grading.verifier} verifier, "
                        f"answer from {problem_set.grading.source})")
    for column in ("row", "problem", "reward", "reason", "read / expected"):
        table.add_column(column, justify="right" if column in ("row", "reward") else "left")
    for r in records[:limit]:
        read = r["detail"].strip().splitlines()[-1] if r["reason"] == "error" else r["detail"]
        shown = f"{read!r} / {r['expected']!r}" if "expected" in r else read
        table.add_row(str(r["row"]), r["problem"], f"{r['reward']:g}", r["reason"], shown[:80])
    out.print(table)
    counts = Counter(r["reason"] for r in records)
    if stats.missing_text or stats.malformed_json or stats.non_utf8:
        counts["unreadable_row"] = stats.missing_text + stats.malformed_json + stats.non_utf8
    mean = sum(r["reward"] for r in records) / max(len(records), 1)
    out.print(f"{len(records)} completions, mean reward {mean:.3f}: "
              + ", ".join(f"{n} {reason}" for reason, n in counts.most_common()))
    error = next((r for r in records if r["reason"] == "error"), None)
    if error is not None:
        out.print(f"[bold]first verifier error[/] (row {error['row']}):\n{error['detail']}",
                  markup=True, highlight=False)


def register(app: typer.Typer) -> None:
    for fn in (run, seeds, status, show, ls, verify, gc, export, plot):
        app.command(name=fn.__name__, rich_help_panel="Recipes and store")(fn)
    app.command(name="score", rich_help_panel="Problems and rewards")(score)
    app.command(name="chat", rich_help_panel="Use a model")(chat)
    app.command(name="serve", rich_help_panel="Use a model")(serve)
