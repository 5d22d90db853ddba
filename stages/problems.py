"""problems: a problem set — your questions with verifiable answers, or the built-in families'.

Writes a `problems` artifact (dsctl/tasks/problem_set.py) that sft, grpo,
rejection_sample, distill, eval and decontaminate take in place of their `families`:
`<split>.jsonl` for the worked, answer_only, dev and test splits, and problem_set.json
with the grading and every skipped row counted by reason.

From your rows (`paths`: JSONL/Parquet files, folders or globs; `dataset`: a `datasets`
hub name or folder): fields are mapped by `prompt_field` / `answer_field` /
`solution_field` / `choices_field`, `answer_pattern` pulls the reference out of a longer
answer (GSM8K: `#### (.+)`), and `verifier` says how answers are judged. A dataset's own
train / validation / test splits are kept (file names like `test.jsonl` or
`train-00000-of-00001.parquet` name theirs); a missing dev or test split is carved from
the training rows by a hash of the prompt. Rows the verifier could not check against (no
prompt, no answer, a pattern that does not match, a reference it cannot parse) are
counted and skipped, never rewarded.

Without either: the built-in `families` at `difficulty`, `train_problems` of each
training split and `eval_problems` of dev and of test (0 = the whole split), drawn as the
stages that use families draw them, so a stage gives the same numbers either way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dsctl.configs import stage_defaults
from dsctl.data.config import RowInputConfig
from dsctl.errors import UserError
from dsctl.pipeline.stage import StageContext, StageSpec
from dsctl.tasks.config import EvalSplitConfig, TaskConfig, TrainSplitConfig
from dsctl.tasks.grading import ANSWER_SOURCES, BUILT_IN_VERIFIERS, Grading, check_verifier

_SPLIT_IN_NAME = re.compile(r"(?:^|[^a-z])(train|validation|valid|dev|test)(?:[^a-z]|$)")


@dataclass
@stage_defaults(eval_problems=400)
class ProblemsConfig(TaskConfig, TrainSplitConfig, EvalSplitConfig, RowInputConfig):
    """A problem set from `paths` and/or `dataset` (a file's name gives its split:
    test.jsonl, train-00000-of-00001.parquet; a dataset's splits are its own), or from
    the built-in `families` when neither is given."""

    name: str = ""
    """The set's name, which reports use as its family; "" = taken from the dataset or
    the first path."""
    prompt_field: str = "question"
    """The field holding the question posed to the model."""
    answer_field: str = "answer"
    """The field holding the reference answer (or a text that ends with it: see answer_pattern)."""
    solution_field: str = ""
    """The field holding a worked solution sft can learn from ("" = none; the answer field
    itself when it holds the solution and answer_pattern picks the answer out of it)."""
    choices_field: str = ""
    """For multiple choice: the field holding the list of choices; they are appended to
    the prompt as "A. …", and the reference may be a letter, an index or a choice's text."""
    answer_pattern: str = ""
    """A regex picking the reference out of the answer field (its first group, else the
    whole match; the last match counts), e.g. "#### (.+)" for GSM8K; "boxed" = the last
    \\boxed{} (MATH's solutions); "" = the whole field."""
    verifier: str = "number"
    """How answers are judged: exact, number, math (math-verify), choice, or your
    function as module:function, called fn(row, completion) -> float reward."""
    answer_from: str = ""
    """Where a completion's answer is read: answer_tag (<answer>…</answer>), boxed (last
    \\boxed{}), last_number, completion; "" = the verifier's default (boxed for math,
    answer_tag otherwise)."""
    tolerance: float = 1e-6
    """number: relative tolerance (absolute near zero) for two values to be equal."""
    worked_share: float = 0.5
    """Share of training rows with a solution that become `worked` (sft's); the rest are
    `answer_only` (grpo's and rejection sampling's), whose solutions are never trained on."""
    splits: dict[str, str] = field(default_factory=dict)
    """Dataset split names other than train/validation/dev/test, mapped to the split they
    feed: {train_sft = "train", test_sft = "test"}; "" leaves a split out."""

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_verifier(self.verifier)
        except ValueError as exc:
            raise ValueError(f"verifier: {exc}") from None
        if self.verifier not in BUILT_IN_VERIFIERS and ":" not in self.verifier:
            raise ValueError(f"verifier must be one of {', '.join(BUILT_IN_VERIFIERS)} or module:function")
        if self.answer_from and self.answer_from not in ANSWER_SOURCES:
            raise ValueError(f"answer_from must be one of {', '.join(ANSWER_SOURCES)} "
                             "(or \"\" for the verifier's default)")
        if self.answer_pattern and self.answer_pattern != "boxed":
            try:
                re.compile(self.answer_pattern)
            except re.error as exc:
                raise ValueError(f"answer_pattern {self.answer_pattern!r} is not a regex: {exc}") from None
        if not 0.0 <= self.worked_share <= 1.0:
            raise ValueError(f"worked_share must be in [0, 1], got {self.worked_share}")
        bad = {k: v for k, v in self.splits.items() if v not in ("train", "dev", "test", "")}
        if bad:
            raise ValueError(f"splits: {bad} must map to train, dev, test or \"\"")


def run(ctx: StageContext) -> dict[str, Any]:
    from dsctl.tasks.problem_set import write_problem_set

    cfg: ProblemsConfig = ctx.config
    if cfg.paths or cfg.dataset:
        problems, meta = _from_rows(ctx, cfg)
    else:
        problems, meta = _from_families(ctx, cfg)
    write_problem_set(ctx.out, problems, meta)
    counts = {split: len(rows) for split, rows in problems.items()}
    ctx.info(f"problem set {meta['name']!r}: " + ", ".join(f"{n:,} {s}" for s, n in counts.items())
             + (f"; skipped {sum(meta['skipped'].values()):,} rows ("
                + ", ".join(f"{n:,} {r}" for r, n in sorted(meta["skipped"].items())) + ")" if meta["skipped"] else ""))
    for reason, example in sorted(meta["skipped_examples"].items()):
        ctx.info(f"  first row skipped as {reason}: {example[:160]}")
    return {"problems": sum(counts.values()), **{f"{s}_problems": n for s, n in counts.items()},
            "skipped": sum(meta["skipped"].values()), **{f"skipped_{r}": n for r, n in meta["skipped"].items()}}


def _from_families(ctx: StageContext, cfg: ProblemsConfig) -> tuple[dict[str, list], dict[str, Any]]:
    from dsctl.tasks.config import held_out_problems, task_problems

    problems = {split: task_problems(cfg.families, split, cfg.train_problems, ctx.seed, cfg.difficulty)
                for split in ("worked", "answer_only")}
    problems.update({split: held_out_problems(cfg.families, split, cfg.eval_problems, cfg.difficulty)
                     for split in ("dev", "test")})
    name = cfg.name or "+".join(cfg.families)
    return problems, {"name": name, "grading": asdict(Grading()), "source": {"families": cfg.families,
                      "difficulty": cfg.difficulty}, "skipped": {}, "skipped_examples": {}}


def _from_rows(ctx: StageContext, cfg: ProblemsConfig) -> tuple[dict[str, list], dict[str, Any]]:
    from dsctl.data.corpus import ReadStats
    from dsctl.tasks.problem_set import FieldMap, build_problem_set

    grading = Grading(cfg.verifier, cfg.answer_from, cfg.tolerance)
    if ":" in cfg.verifier:
        from dsctl.tasks.grading import load_function

        try:
            load_function(cfg.verifier)  # a typo fails here, not after the first rollout
        except ValueError as exc:
            raise UserError(str(exc)) from None
    fields = FieldMap(cfg.prompt_field, cfg.answer_field, cfg.solution_field, cfg.choices_field, cfg.answer_pattern)
    stats = ReadStats()
    where = cfg.dataset or ", ".join(cfg.paths)
    name = cfg.name or _set_name(cfg.dataset or cfg.paths[0])
    with ctx.progress(None, f"read {where}", unit="row") as bar:
        problems, report = build_problem_set(_counted(_rows(cfg, stats, ctx.scratch / "hf_cache"), bar),
                                             fields, grading, name, cfg.worked_share)
    skipped = dict(report.skipped)
    if stats.missing_text:
        skipped["no_prompt"] = skipped.get("no_prompt", 0) + stats.missing_text
    for key in ("malformed_json", "non_utf8", "damaged_files"):
        if getattr(stats, key):
            skipped[key] = getattr(stats, key)
    if not sum(len(rows) for rows in problems.values()):
        raise UserError(f"{where}: no usable problems (skipped: {skipped or 'no rows read'}); "
                        f"check prompt_field={cfg.prompt_field!r}, answer_field={cfg.answer_field!r}"
                        + (f", answer_pattern={cfg.answer_pattern!r}" if cfg.answer_pattern else ""))
    if skipped.get("answer_pattern_no_match"):
        ctx.warn(f"answer_pattern {cfg.answer_pattern!r} matched nothing "
                 f"in {skipped['answer_pattern_no_match']:,} rows")
    meta = {"name": name, "grading": asdict(grading), "skipped": skipped, "skipped_examples": report.examples,
            "source": {"paths": cfg.paths, "dataset": cfg.dataset, "dataset_config": cfg.dataset_config,
                       "fields": asdict(fields)}}
    return problems, meta


def _counted(rows: Iterator[tuple[str, dict]], bar: Any) -> Iterator[tuple[str, dict]]:
    for item in rows:
        bar.advance(1)
        yield item


def _rows(cfg: ProblemsConfig, stats: Any, cache_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(the split the data calls the row's, JSON-ready row) for every row of `paths`,
    then of `dataset`."""
    from dsctl.data.corpus import expand_paths, iter_rows, jsonable, load_dataset

    for path in expand_paths(cfg.paths):
        split = _split_named(path)
        for row in iter_rows([path], stats, text_field=cfg.prompt_field):
            yield split, jsonable(row)
    if not cfg.dataset:
        return
    for split_name, dataset in load_dataset(cfg.dataset, cfg.dataset_config, None, cache_dir).items():
        split = cfg.splits.get(split_name, split_name if split_name in _KNOWN else None)
        if split is None:
            raise UserError(f"dataset '{cfg.dataset}' has a split named {split_name!r}: map it with "
                            f"splits = {{{split_name} = \"train\"}} (or \"dev\", \"test\", \"\" to leave it out)")
        if split:
            for row in dataset:
                yield split, jsonable(row)


_KNOWN = ("train", "validation", "valid", "dev", "test")


def _split_named(path: Path) -> str:
    """The split a file's name gives (test.jsonl, train-00000-of-00001.parquet); "" for a
    file that names none (its rows are divided by hash, as training rows are)."""
    found = _SPLIT_IN_NAME.search(path.name.lower())
    return found.group(1) if found else ""


def _set_name(where: str) -> str:
    """A name from a dataset or path: its last component before any glob (data/gsm/*.jsonl -> gsm)."""
    parts = []
    for part in Path(where).parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    stem = Path(*parts).name if parts else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.split(".")[0]) or "problems"


def fingerprint(cfg: ProblemsConfig) -> dict[str, Any]:
    """What the config only names: the files' contents (a local dataset folder's too) and
    a verifier module's source."""
    from dsctl.data.corpus import expand_paths
    from dsctl.pipeline.store import sha256_file

    extra: dict[str, Any] = {}
    if cfg.paths:
        extra["files"] = {str(p): sha256_file(p) for p in expand_paths(cfg.paths)}
    local = Path(cfg.dataset) if cfg.dataset else None
    if local is not None and local.is_dir():
        extra["dataset_files"] = {str(p.relative_to(local)): sha256_file(p)
                                  for p in sorted(local.rglob("*")) if p.is_file()}
    if ":" in cfg.verifier:
        from dsctl.tasks.grading import function_source

        source = function_source(cfg.verifier)
        extra["verifier_source"] = hashlib.sha256(source.read_bytes()).hexdigest() if source else "missing"
    return extra


STAGE = StageSpec(
    name="problems",
    version=1,
    config=ProblemsConfig,
    run=run,
    output="problems",
    inputs={},
    help="A problem set from your JSONL/Parquet/datasets rows (fields mapped by config, a verifier "
         "per set) or from the built-in families: what sft, grpo, rejection_sample, distill, eval and "
         "decontaminate take in place of `families`.",
    fingerprint=fingerprint,
    example="dsctl problems --set dataset=openai/gsm8k --set dataset_config=main --set 'answer_pattern=#### (.+)'",
)
