"""The stage API: what a stage declares, and what it gets while it runs.

A stage is one module under `stages/` that defines `STAGE = StageSpec(...)`:

    @dataclass
    class CleanConfig:
        min_words: int = 20
        \"\"\"Documents with fewer words are rejected.\"\"\"

    def run(ctx: StageContext) -> dict:
        corpus = ctx.input("corpus")            # an Artifact: .path, .key, .manifest
        ...write files under ctx.out...
        return {"kept": n_kept}                 # summary metrics -> manifest.json

    STAGE = StageSpec(
        name="clean", version=1, config=CleanConfig, run=run, output="corpus",
        inputs={"corpus": Input("corpus")},
        help="Normalize text and drop documents that fail quality heuristics.",
    )

Adding a stage is adding such a module; the registry finds it, the CLI grows a
subcommand with the config fields as options, and recipes can name it.

Resumable work: `ctx.out` (the artifact being built) and `ctx.scratch` (checkpoints,
never published) survive a crash or SIGKILL, because both live under the store's
`staging/<key>/`. A stage records how far it got with `ctx.save_state({...})` and reads
it back with `ctx.load_state()` on the next attempt.

Per-step records (`ctx.log(step=..., loss=...)`) go to the artifact's metrics.jsonl and,
mirrored, to TensorBoard event files in `tensorboard/` beside it (`ScalarEvents`), so
`tensorboard --logdir WORKDIR` shows every run's curves, live from staging/ and, once
published, from objects/.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.markup import escape

from dsctl.errors import UserError
from dsctl.files import write_json_atomic
from dsctl.pipeline.store import Artifact
from dsctl.progress import ProgressHandle, Reporter

#: The artifact kinds (docs/ARCHITECTURE.md, "Store"), plus "any" for stages that accept every kind.
METRICS_FILE = "metrics.jsonl"
"""Per-step records a stage logs with `ctx.log`, at the root of its artifact."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files mirroring metrics.jsonl's step records, beside it."""

KINDS = ("corpus", "tokenizer", "shards", "checkpoint", "samples", "report", "problems", "any")


@dataclass(frozen=True)
class Input:
    """One input slot of a stage."""

    kind: str
    """Artifact kind this slot accepts (one of KINDS)."""
    many: bool = False
    """Whether the slot takes several artifacts (e.g. eval over several checkpoints)."""
    optional: bool = False
    """Whether the stage can run with this slot empty."""
    help: str = ""

    def accepts(self, kind: str) -> bool:
        return self.kind in ("any", kind)


PROBLEMS_INPUT = Input("problems", optional=True,
                       help="a problem set (the `problems` stage) to use instead of `families`")
"""The slot every problem-using stage shares: with it, the stage draws its problems and
grades them the set's way; without it, from its `families`."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    """Stage type name, used in recipes (`[stages.NAME]` or `uses = "NAME"`) and the CLI."""
    version: int
    """Format version: bump it when the stage's output changes for the same config."""
    config: type
    """The config dataclass; every field documented, with the default to start from."""
    run: Callable[["StageContext"], dict[str, Any] | None]
    """Does the work; returns summary metrics (the first is the stage's headline)."""
    output: str
    """Kind of artifact the stage writes."""
    inputs: dict[str, Input] = field(default_factory=dict)
    help: str = ""
    """One paragraph for `--help`; its first sentence is the one-line summary."""
    fingerprint: Callable[[Any], Any] | None = None
    """Extra key material for outside state the config only names (e.g. hashes of the
    user files a `source` stage reads), so changed files change the key."""
    example: str = ""
    """A copy-paste CLI example shown in `--help`."""
    preflight: Callable[[Any], None] | None = None
    """Checks a config against this machine (e.g. that the model fits the device's
    memory) before any stage of a run starts; raises ValueError with the fix. Not part
    of plan(): `dsctl status` stays quick and valid on a machine that could not run it."""
    argument: str = ""
    """A config field the stage's CLI command also takes as its positional argument
    (`dsctl import DIR` sets `path`); "" = options only."""


class StageContext:
    """Everything a running stage may touch. Made by the runner, one per attempt."""

    def __init__(
        self,
        spec: StageSpec,
        config: Any,
        seed: int,
        inputs: dict[str, list[Artifact]],
        out: Path,
        scratch: Path,
        reporter: Reporter,
        label: str,
        key: str,
    ):
        self.spec = spec
        self.config = config
        self.seed = seed
        self.inputs = inputs
        self.out = out
        self.scratch = scratch
        self.reporter = reporter
        self.label = label
        self.key = key
        self.metrics_path = out / METRICS_FILE
        self._events: ScalarEvents | None = None

    # -- inputs -----------------------------------------------------------------------
    def input(self, slot: str) -> Artifact:
        """The single artifact in `slot`; a clear error if there is none."""
        found = self.inputs.get(slot, [])
        if not found:
            raise UserError(f"stage '{self.label}' needs a '{slot}' input; none was given")
        return found[0]

    def maybe_input(self, slot: str) -> Artifact | None:
        found = self.inputs.get(slot, [])
        return found[0] if found else None

    def inputs_of(self, slot: str) -> list[Artifact]:
        return list(self.inputs.get(slot, []))

    # -- resumable state ---------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        """What an earlier, interrupted attempt recorded with `save_state` (or {})."""
        path = self.scratch / "state.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        """Atomically record progress; a crash leaves the previous state or this one."""
        write_json_atomic(self.scratch / "state.json", state)

    # -- reporting ---------------------------------------------------------------------
    def log(self, **metrics: Any) -> None:
        """Append one record to the stage's metrics.jsonl (e.g. step=10, loss=2.3); a record
        with a `step` also goes to the TensorBoard event files beside it."""
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(metrics, sort_keys=False) + "\n")
        if "step" not in metrics:
            return
        if self._events is None:  # this attempt's first step record: mirror the file as it is now
            self._events = ScalarEvents(self.metrics_path)
        else:
            self._events.add(metrics)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the runner calls it when `run` returns or
        raises, before it publishes); a later `log` opens a new one."""
        if self._events is not None:
            self._events.close()
            self._events = None

    def info(self, message: str) -> None:
        self.reporter.info(f"  [dim]{escape(self.label)}:[/] {escape(message)}")

    def warn(self, message: str) -> None:
        self.reporter.warn(f"{self.label}: {message}")

    def progress(self, total: float | None, description: str = "", unit: str = "it",
                 completed: float = 0) -> AbstractContextManager[ProgressHandle]:
        """A progress bar context: `with ctx.progress(n, "encode") as bar: bar.advance()`."""
        return self.reporter.progress(total, f"{self.label} {description}".strip(), unit, completed)


class ScalarEvents:
    """TensorBoard event files that mirror a metrics.jsonl: each number of a record with an
    integer `step` becomes a scalar at that step, tagged by its field name (`loss`, `lr`,
    `reward_mean`). Strings, booleans, lists and non-finite numbers (a NaN loss) are skipped.

    Opening replaces the event files of earlier attempts with the records metrics.jsonl
    holds by then — the training loop has already cut it back to the resumed checkpoint —
    so a killed-and-resumed stage publishes each step once, as metrics.jsonl does. Every
    record is flushed (never fsynced) before `add` returns, so the files are whole at any
    moment: readable while the stage runs, and an unclosed or killed writer loses nothing.
    Event bytes and names hold wall times, the host and the pid: compare metrics.jsonl,
    never these files, across runs. tensorboard is imported here, not at module import,
    so `dsctl --help` stays fast."""

    FLUSH_SECS = 10
    """The writer thread's own flush period (each `add` flushes anyway)."""

    def __init__(self, metrics_path: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        directory = metrics_path.parent / TENSORBOARD_DIR
        for stale in directory.glob("events.out.tfevents.*"):
            stale.unlink()
        self._writer = EventFileWriter(str(directory), max_queue_size=1024, flush_secs=self.FLUSH_SECS)
        for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line a killed attempt left half-written
                continue
            self._write(record)
        self._writer.flush()

    def add(self, record: dict[str, Any]) -> None:
        self._write(record)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _write(self, record: Any) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            return
        values = [summary_pb2.Summary.Value(tag=name, simple_value=number) for name, value in record.items()
                  if name != "step" and (number := _finite_number(value)) is not None]
        if values:
            self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                   summary=summary_pb2.Summary(value=values)))


FLOAT32_MAX = 3.4028234663852886e38
"""TensorBoard stores a scalar as a float32: anything larger would read back as inf."""


def _finite_number(value: Any) -> float | None:
    """`value` as a float if it is an int or float (not a bool) that is finite in float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float range
        return None
    return number if math.isfinite(number) and abs(number) <= FLOAT32_MAX else None


class StageRegistry:
    """The stage types a run can use: every `STAGE` (or `STAGES` list) of the modules that
    installed packages declare under the `dsctl.stages` entry-point group (a package counts
    all its modules; dsctl's own is `stages/`), plus modules named in `$DSCTL_PLUGINS`
    (comma-separated) for stages that live elsewhere. The framework never names a stage."""

    ENTRY_POINTS = "dsctl.stages"

    def __init__(self, specs: Iterable[StageSpec]):
        self._specs: dict[str, StageSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"two stages are named '{spec.name}'")
            if spec.output not in KINDS:
                raise ValueError(f"stage '{spec.name}' outputs unknown kind '{spec.output}'")
            self._specs[spec.name] = spec

    @classmethod
    def discover(cls, extra_modules: Iterable[str] = ()) -> "StageRegistry":
        modules = []
        for entry in entry_points(group=cls.ENTRY_POINTS):
            root = entry.load()
            modules.append(root)
            if hasattr(root, "__path__"):  # a package: each of its modules
                modules += [importlib.import_module(f"{root.__name__}.{m.name}")
                            for m in pkgutil.iter_modules(root.__path__)]
        plugins = [m.strip() for m in os.environ.get("DSCTL_PLUGINS", "").split(",") if m.strip()]
        modules += [importlib.import_module(name) for name in [*plugins, *extra_modules]]
        if not modules:
            raise UserError(f"no stages found: no installed package declares '{cls.ENTRY_POINTS}' entry points "
                            "(install dsctl with `pip install -e .`)")
        specs = []
        for module in modules:
            found = [getattr(module, "STAGE", None), *getattr(module, "STAGES", [])]
            specs.extend(s for s in found if isinstance(s, StageSpec))
        return cls(specs)

    def get(self, name: str) -> StageSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self):
        return iter(self._specs[n] for n in self.names())
