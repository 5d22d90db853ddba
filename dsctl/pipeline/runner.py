"""Runs a recipe's DAG against the store: cache hits, resume, failure reports.

`plan()` turns a recipe into `StagePlan`s with their keys, computed bottom-up before
anything runs (a key depends only on config, seed and input keys), so `dsctl status`
can say what would run without running it. `execute()` walks the plan in topological
order: a stage whose key is in objects/ is a hit; otherwise it takes the key's lock,
builds in staging/ (resuming what a killed attempt left there) and publishes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from dsctl.configs import build_config, config_to_dict
from dsctl.errors import StageFailed, UserError
from dsctl.files import write_json_atomic
from dsctl.pipeline.recipe import Recipe, key_location
from dsctl.pipeline.smoke import shrink
from dsctl.pipeline.stage import METRICS_FILE, StageContext, StageRegistry, StageSpec
from dsctl.pipeline.store import Artifact, Store, compute_key
from dsctl.progress import Reporter


@dataclass
class StagePlan:
    name: str
    spec: StageSpec
    config: Any
    seed: int
    upstream: dict[str, list[str]]
    """slot -> upstream stage names (inside the recipe)."""
    external: dict[str, list[Artifact]] = field(default_factory=dict)
    """slot -> artifacts given from outside the recipe (CLI --from)."""
    key: str = ""
    input_keys: dict[str, list[str]] = field(default_factory=dict)


def _assign_slots(spec: StageSpec, kinds: list[tuple[str, str]], where: str) -> dict[str, list[str]]:
    """Put each (name, kind) into the first slot of `spec` that accepts its kind."""
    slots: dict[str, list[str]] = {}
    for name, kind in kinds:
        for slot, inp in spec.inputs.items():
            if inp.accepts(kind) and (inp.many or not slots.get(slot)):
                slots.setdefault(slot, []).append(name)
                break
        else:
            takes = ", ".join(sorted({i.kind for i in spec.inputs.values()})) or "no inputs"
            raise UserError(f"{where}: '{name}' gives a {kind}, but {spec.name} takes {takes}")
    return slots


def _check_slots(spec: StageSpec, slots: dict[str, list[Any]], where: str) -> None:
    for slot, inp in spec.inputs.items():
        if not inp.optional and not slots.get(slot):
            raise UserError(f"{where}: {spec.name} needs a '{slot}' input ({inp.kind}); name it in 'from'")
        if len(slots.get(slot, [])) > 1 and not inp.many:
            raise UserError(f"{where}: {spec.name} takes one '{slot}' input, got {len(slots[slot])}")
    for slot in slots:
        if slot not in spec.inputs:
            raise UserError(f"{where}: {spec.name} has no input slot '{slot}'; slots: {', '.join(spec.inputs)}")


def plan(recipe: Recipe, registry: StageRegistry, smoke: bool = False) -> dict[str, StagePlan]:
    """Validate every stage against the registry and compute all keys; `smoke` shrinks
    every config (dsctl.pipeline.smoke) after it is read as written."""
    plans: dict[str, StagePlan] = {}
    for name in recipe.order():
        entry = recipe.stages[name]
        spec = registry.get(entry.type)
        if spec is None:
            close = difflib.get_close_matches(entry.type, registry.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{entry.where}: unknown stage type '{entry.type}'{hint}; "
                            f"known: {', '.join(registry.names())}")
        config = build_config(spec.config, entry.config, lambda key, n=name: key_location(recipe, n, key))
        if smoke:
            try:
                config = shrink(config)
            except ValueError as exc:
                raise UserError(f"{entry.where}: --smoke: {exc}") from None
        if isinstance(entry.upstream, dict):
            upstream = entry.upstream
        else:
            kinds = [(up, plans[up].spec.output) for up in entry.upstream]
            upstream = _assign_slots(spec, kinds, entry.where)
        for slot, names in upstream.items():
            inp = spec.inputs.get(slot)
            for up in names:
                if inp is not None and not inp.accepts(plans[up].spec.output):
                    raise UserError(f"{entry.where}: slot '{slot}' takes a {inp.kind}, "
                                    f"but '{up}' gives a {plans[up].spec.output}")
        _check_slots(spec, upstream, entry.where)
        seed = entry.seed if entry.seed is not None else recipe.seed
        p = StagePlan(name, spec, config, seed, upstream)
        p.input_keys = {slot: [plans[up].key for up in names] for slot, names in upstream.items()}
        p.key = _key(p)
        plans[name] = p
    return plans


def with_training_seed(recipe: Recipe, plans: dict[str, StagePlan], seed: int) -> Recipe:
    """`recipe` named `NAME@seedN`, with `seed` for every stage a training seed enters:
    each that writes a checkpoint and everything downstream of one (model init, data
    order, sampling, eval's samples). The data chain keeps the recipe's seed, so seeds
    share its cached artifacts; a stage that pins its own `seed` keeps it."""
    seeded: set[str] = set()
    for name in recipe.order():
        ups = recipe.stages[name].upstream_names()
        if plans[name].spec.output == "checkpoint" or seeded & set(ups):
            seeded.add(name)
    stages = {name: dataclasses.replace(entry, seed=seed) if name in seeded and entry.seed is None else entry
              for name, entry in recipe.stages.items()}
    return dataclasses.replace(recipe, name=f"{recipe.name}@seed{seed}", stages=stages)


def single_stage_plan(spec: StageSpec, values: dict[str, Any], inputs: list[tuple[str | None, Artifact]],
                      seed: int, where: str) -> StagePlan:
    """A one-stage plan for `dsctl <stage> --from ...`: inputs are outside artifacts."""
    config = build_config(spec.config, values, where)
    named = [(slot, a) for slot, a in inputs if slot]
    by_kind = _assign_slots(spec, [(str(i), a.kind) for i, (slot, a) in enumerate(inputs) if not slot], where)
    external: dict[str, list[Artifact]] = {}
    for slot, indices in by_kind.items():
        external.setdefault(slot, []).extend(inputs[int(i)][1] for i in indices)
    for slot, artifact in named:
        inp = spec.inputs.get(slot)
        if inp is not None and not inp.accepts(artifact.kind):
            raise UserError(f"{where}: slot '{slot}' takes a {inp.kind}, but {artifact.label} is a {artifact.kind}")
        external.setdefault(slot, []).append(artifact)
    _check_slots(spec, external, where)
    p = StagePlan(spec.name, spec, config, seed, {}, external)
    p.input_keys = {slot: [a.key for a in arts] for slot, arts in external.items()}
    p.key = _key(p)
    return p


def _key(p: StagePlan) -> str:
    extra = p.spec.fingerprint(p.config) if p.spec.fingerprint else None
    return compute_key(p.spec.name, p.spec.version, config_to_dict(p.config), p.input_keys, p.seed, extra)


@dataclass
class StageResult:
    name: str
    key: str
    state: str  # "hit" | "ran" | "failed"
    seconds: float = 0.0
    error: str = ""


class Runner:
    def __init__(self, store: Store, reporter: Reporter, recipe_name: str = "adhoc", debug: bool = False):
        self.store = store
        self.reporter = reporter
        self.recipe_name = recipe_name
        self.debug = debug

    def execute(self, plans: dict[str, StagePlan], force: set[str] = frozenset(),
                until: str | None = None) -> list[StageResult]:
        names = list(plans)
        if until is not None:
            names = [n for n in names if n == until or n in _ancestors(plans, until)]
        for name in names:  # refuse what cannot run here before anything runs
            p = plans[name]
            if p.spec.preflight and not self.store.has(p.key):
                try:
                    p.spec.preflight(p.config)
                except ValueError as exc:
                    raise UserError(f"[stages.{name}]: {exc}") from None
        record_path = self.store.new_run_record()
        results: list[StageResult] = []
        record = {"recipe": self.recipe_name, "pid": os.getpid(), "started": time.time(), "stages": []}
        try:
            for name in names:
                result = self._run_one(plans, plans[name], force=name in force)
                results.append(result)
                record["stages"] = [r.__dict__ for r in results]
                write_json_atomic(record_path, record)
        finally:
            record["finished"] = time.time()
            record["stages"] = [r.__dict__ for r in results]
            write_json_atomic(record_path, record)
        return results

    def _run_one(self, plans: dict[str, StagePlan], p: StagePlan, force: bool) -> StageResult:
        store = self.store
        if force and store.has(p.key):
            with store.lock(p.key):
                store.remove(p.key)
        if store.has(p.key):
            self._hit(p)
            return StageResult(p.name, p.key, "hit")

        def wait(holder):
            self.reporter.info(f"[yellow]…[/] {p.name}: waiting for {holder}, which is building {p.key[:12]}")

        with store.lock(p.key, on_wait=wait):
            if store.has(p.key):  # another process finished it while we waited
                self._hit(p)
                return StageResult(p.name, p.key, "hit")
            return self._build(plans, p)

    def _hit(self, p: StagePlan) -> None:
        self.reporter.info(f"[green]✓[/] {p.name:<18} cached  [dim]{p.key[:12]}[/]")
        self._set_ref(p)

    def _set_ref(self, p: StagePlan) -> None:
        self.store.set_ref(self.recipe_name, p.name, {
            "key": p.key, "stage": p.spec.name, "config": config_to_dict(p.config),
            "inputs": p.input_keys, "seed": p.seed,
        })

    def _inputs(self, plans: dict[str, StagePlan], p: StagePlan) -> dict[str, list[Artifact]]:
        inputs: dict[str, list[Artifact]] = {}
        for slot, names in p.upstream.items():
            inputs[slot] = [self.store.artifact(plans[n].key, label=f"{self.recipe_name}:{n}") for n in names]
        for slot, artifacts in p.external.items():
            inputs.setdefault(slot, []).extend(artifacts)
        for artifacts in inputs.values():
            for artifact in artifacts:
                problems = self.store.verify(artifact.key) if self.store.has(artifact.key) else []
                if problems:
                    raise UserError(
                        f"stage '{p.name}' refuses its input {artifact.label} ({artifact.key[:12]}): "
                        f"it is damaged ({problems[0]}); rebuild it with `dsctl run RECIPE --force STAGE`"
                    )
        return inputs

    def _build(self, plans: dict[str, StagePlan], p: StagePlan) -> StageResult:
        staging = self.store.staging(p.key)
        resumed = staging.exists()
        staging.artifact.mkdir(parents=True, exist_ok=True)
        staging.scratch.mkdir(parents=True, exist_ok=True)
        staging.failure_file.unlink(missing_ok=True)
        verb = "resuming" if resumed else "running"
        self.reporter.info(f"[cyan]▶[/] {p.name:<18} {verb}  [dim]{p.key[:12]}[/]")
        started = time.time()
        inputs = self._inputs(plans, p)
        ctx = StageContext(p.spec, p.config, p.seed, inputs, staging.artifact, staging.scratch,
                           self.reporter, p.name, p.key)
        try:
            metrics = p.spec.run(ctx) or {}
        except BaseException as exc:
            write_json_atomic(staging.failure_file, {
                "error": f"{type(exc).__name__}: {exc}", "time": time.time(),
                "traceback": traceback.format_exc(),
            })
            if isinstance(exc, (UserError, KeyboardInterrupt)):
                raise
            raise StageFailed(p.name, exc) from exc
        finally:
            ctx.close()  # the TensorBoard writer: its files are whole and closed before publish hashes them
        finished = time.time()
        for field_name, names in metrics.items():  # damaged input files (dsctl.data.corpus.ReadStats)
            if field_name.endswith("damaged_file_names") and names:
                shown = ", ".join(map(str, names[:5])) + (" ..." if len(names) > 5 else "")
                ctx.warn(f"{len(names)} input file(s) were damaged and read only up to the damage: {shown}")
        self.store.publish(p.key, {
            "stage": p.spec.name, "name": p.name, "kind": p.spec.output, "version": p.spec.version,
            "config": config_to_dict(p.config), "seed": p.seed, "inputs": p.input_keys,
            "input_labels": {s: [a.label for a in arts] for s, arts in inputs.items()},
            "metrics": _jsonable_metrics(metrics), "headline": headline_key(metrics),
            "started": started, "finished": finished,
            "seconds": round(finished - started, 3), "recipe": self.recipe_name,
        })
        self._set_ref(p)
        self.reporter.info(f"[green]✓[/] {p.name:<18} done in {finished - started:.1f}s  "
                           f"[dim]{p.key[:12]}[/] {headline(metrics)}")
        return StageResult(p.name, p.key, "ran", finished - started)


def _ancestors(plans: dict[str, StagePlan], name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for names in plans[todo.pop()].upstream.values():
            for up in names:
                if up not in seen:
                    seen.add(up)
                    todo.append(up)
    return seen


def _jsonable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(metrics, default=float))


def headline_key(metrics: dict[str, Any]) -> str | None:
    """The stage's headline metric: the first numeric one it returned."""
    return next((k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)


def headline(metrics: dict[str, Any], key: str | None = None) -> str:
    """`name=value` of the headline metric (manifests are stored with sorted keys, so
    they carry the key the stage put first)."""
    key = key if key in metrics else headline_key(metrics)
    if key is None:
        return ""
    value = metrics[key]
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


def stage_state(store: Store, key: str) -> str:
    """cached | running | failed | partial | missing — for `dsctl status`."""
    if store.has(key):
        return "cached"
    if store.is_locked(key):
        return "running"
    staging = store.staging(key)
    if staging.failure_file.exists():
        return "failed"
    return "partial" if staging.exists() else "missing"


def stage_progress(store: Store, key: str, max_steps: int | None = None) -> str:
    """Where an unfinished stage's training got to, from the last line of its staged
    metrics.jsonl: "step 120/240, loss 2.91" ("" when it has logged no step yet)."""
    path = store.staging(key).artifact / METRICS_FILE
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))  # the tail is enough for one line
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        try:
            last = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the seek or by a kill mid-write
        if isinstance(last, dict) and "step" in last:
            step = f"step {last['step']}" + (f"/{max_steps}" if max_steps else "")
            extra = [f"{k} {last[k]:.4g}" for k in ("loss", "reward_mean") if isinstance(last.get(k), (int, float))]
            return ", ".join([step, *extra])
    return ""


def failure_message(store: Store, key: str) -> str:
    path = store.staging(key).failure_file
    return json.loads(path.read_text())["error"] if path.exists() else ""
