"""Problem sets: the artifact every problem-using stage reads, built from a user's rows
or from the built-in families.

Layout of a `problems` artifact:

    problem_set.json        name, grading, rows per split, skipped rows by reason (with
                            the first example of each), where the rows came from
    <split>.jsonl           one problem per line, for each of worked, answer_only, dev,
                            test: id, family, prompt, answer, solution, choices, row

    ps = ProblemSet.load(artifact_dir)
    ps.draw("test", 400)            # the first 400 test problems (0 = all of them)

Splits mean what they mean for the built-in families (tasks/base.py): a dataset's own
train / validation / test splits are used as they are; a set without a dev or test split
has one carved out of its training rows by a hash of the normalized prompt (10% each,
the buckets the built-in families use), so identical prompts always land together. The
training rows are then divided into `worked` (rows with a solution, the only ones sft
and the world may show worked) and `answer_only` (trained on by their answers alone) by
a second hash, `worked_share` of them worked. Training rows whose prompt is also a dev
or test prompt are dropped and counted: no held-out prompt is ever trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from dsctl.errors import UserError
from dsctl.tasks.base import SPLIT_BUCKETS, SPLITS, Problem
from dsctl.tasks.grading import Grading, check_reference, last_boxed

META_FILE = "problem_set.json"
BOXED = "boxed"
"""The answer_pattern that takes a reference from the last \\boxed{} of the answer field."""
NAMED_SPLITS = {"train": "train", "validation": "dev", "valid": "dev", "dev": "dev", "test": "test"}
"""Dataset split names understood without a mapping, and the split each one feeds."""


@dataclass(frozen=True)
class FieldMap:
    """Where a row keeps each part of a problem."""

    prompt_field: str = "question"
    answer_field: str = "answer"
    solution_field: str = ""
    choices_field: str = ""
    answer_pattern: str = ""
    """A regex whose first group (or whole match) is the reference answer inside the
    answer field, e.g. GSM8K's `#### (.+)`; "boxed" = the last \\boxed{} (MATH); "" = the
    whole field. When the solution comes from the same field, the text before the match
    is the solution."""


@dataclass
class BuildReport:
    """What building a set kept and skipped, by reason, with the first example of each."""

    kept: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example[:300])


def normalized_prompt(prompt: str) -> str:
    return " ".join(prompt.casefold().split())


def _bucket(salt: str, text: str) -> int:
    return int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:8], 16) % 1000


def train_split_of(prompt: str, has_solution: bool, carve: Sequence[str], worked_share: float) -> str:
    """The split of a training row: dev or test when the set lacks that split and the
    prompt hashes into its buckets, else worked (only rows with a solution) or answer_only."""
    key = normalized_prompt(prompt)
    bucket = _bucket("split", key)
    for split in carve:
        if bucket in SPLIT_BUCKETS[split]:
            return split
    worked = has_solution and _bucket("worked", key) < worked_share * 1000
    return "worked" if worked else "answer_only"


def _find_reference(text: str, pattern: re.Pattern | None) -> tuple[str, int] | None:
    """(reference, where its match starts) by the last match of `pattern` (a worked
    solution may quote the pattern before its final answer), or by the last \\boxed{}
    when the pattern is "boxed" (pattern None): a regex cannot balance braces."""
    if pattern is None:
        start = text.rfind("\\boxed{")
        boxed = last_boxed(text)
        return None if boxed is None else (boxed, start)
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    return (match.group(1) if pattern.groups else match.group(0)), match.start()


def row_problem(row: dict[str, Any], fields: FieldMap, grading: Grading, name: str,
                pattern: re.Pattern | None) -> Problem:
    """One row as a Problem (split decided later); ValueError says why a row is unusable."""
    prompt, answer_text = row.get(fields.prompt_field), row.get(fields.answer_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("no_prompt")
    if answer_text is None or (isinstance(answer_text, str) and not answer_text.strip()):
        raise ValueError("no_answer")
    answer_text = str(answer_text)
    solution = ""
    answer = answer_text
    if fields.answer_pattern:
        found = _find_reference(answer_text, pattern)
        if found is None:
            raise ValueError("answer_pattern_no_match")
        answer, start = found
        if fields.solution_field == fields.answer_field:
            solution = answer_text[:start].strip()
    if fields.solution_field and fields.solution_field != fields.answer_field:
        solution = str(row.get(fields.solution_field) or "").strip()
    choices = None
    if fields.choices_field:
        choices = row.get(fields.choices_field)
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError("no_choices")
        choices = [str(c) for c in choices]
        prompt = prompt.rstrip() + "\n" + "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    try:
        answer = check_reference(grading.verifier, answer.strip(), choices)
    except ValueError:
        raise ValueError("reference_unreadable") from None
    digest = hashlib.sha256(normalized_prompt(prompt).encode()).hexdigest()[:12]
    data = {"row": row, **({"choices": choices} if choices else {})}
    return Problem(name, f"{name}-{digest}", prompt.strip(), answer, solution, data, "answer_only", grading)


def build_problem_set(named_rows: Iterable[tuple[str, dict[str, Any]]], fields: FieldMap, grading: Grading,
                      name: str, worked_share: float) -> tuple[dict[str, list[Problem]], BuildReport]:
    """(split name as the data calls it, JSON-ready row) pairs -> problems per split, and
    what was skipped. Rows of "train" (or of unsplit data, "") are divided as the module says."""
    pattern = re.compile(fields.answer_pattern) if fields.answer_pattern not in ("", BOXED) else None
    report = BuildReport()
    held: dict[str, list[Problem]] = {"dev": [], "test": []}
    train: list[Problem] = []
    seen_splits: set[str] = set()
    for split_name, row in named_rows:
        target = NAMED_SPLITS.get(split_name, "train")
        seen_splits.add(target)
        try:
            problem = row_problem(row, fields, grading, name, pattern)
        except ValueError as why:
            report.skip(str(why), json.dumps(row, ensure_ascii=False))
            continue
        (held[target] if target in held else train).append(problem)
    carve = [s for s in ("test", "dev") if s not in seen_splits]
    out: dict[str, list[Problem]] = {s: [] for s in SPLITS}
    for split in ("dev", "test"):
        out[split] = [replace(p, split=split) for p in held[split]]
    for p in train:
        split = train_split_of(p.prompt, bool(p.solution), carve, worked_share)
        # an answer-only problem's solution is dropped here, so no stage can train on it
        out[split].append(replace(p, split=split, solution=p.solution if split == "worked" else ""))
    # Held-out splits go first, so a prompt they share with training rows stays held out.
    seen: set[str] = set()
    held_out: set[str] = set()
    for split in ("test", "dev", "worked", "answer_only"):
        if split == "worked":
            held_out = set(seen)
        kept = []
        for p in out[split]:
            key = normalized_prompt(p.prompt)
            if key in seen:
                report.skip("overlaps_dev_or_test" if key in held_out else "duplicate_prompt", p.prompt)
                continue
            seen.add(key)
            kept.append(p)
        out[split] = kept
        report.kept[split] = len(kept)
    return out, report


def write_problem_set(out: Path, problems: dict[str, list[Problem]], meta: dict[str, Any]) -> None:
    """The artifact: one JSONL per split and problem_set.json (meta + counts)."""
    for split in SPLITS:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for p in problems.get(split, []):
                record = {"id": p.id, "family": p.family, "prompt": p.prompt, "answer": p.answer,
                          "solution": p.solution, "data": p.data}
                fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    counts = {split: len(problems.get(split, [])) for split in SPLITS}
    (out / META_FILE).write_text(json.dumps({**meta, "counts": counts}, indent=2, sort_keys=True))


class ProblemSet:
    """A problems artifact, read lazily split by split."""

    def __init__(self, path: Path):
        meta_path = Path(path) / META_FILE
        if not meta_path.is_file():
            raise UserError(f"{path} is not a problem set (no {META_FILE}); make one with `dsctl problems`")
        self.path = Path(path)
        self.meta = json.loads(meta_path.read_text())
        self.name: str = self.meta["name"]
        self.grading = Grading(**self.meta["grading"])
        self._splits: dict[str, list[Problem]] = {}

    @classmethod
    def of(cls, artifact: Any) -> "ProblemSet | None":
        """The problem set of a stage's optional `problems` input (None when it has none)."""
        return None if artifact is None else cls(artifact.path)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.meta["counts"])

    def split(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if split not in self._splits:
            rows = (json.loads(line) for line in (self.path / f"{split}.jsonl").read_text().splitlines() if line)
            self._splits[split] = [Problem(r["family"], r["id"], r["prompt"], r["answer"], r["solution"], r["data"],
                                           split, self.grading) for r in rows]
        return self._splits[split]

    def draw(self, split: str, n: int, field_name: str = "") -> list[Problem]:
        """The first `n` problems of `split` (0 = all of them); the set's order is fixed when
        it is built, so every stage and every seed that asks for n gets the same n."""
        problems = self.split(split)
        if n > len(problems):
            asked = f"{field_name} = {n}" if field_name else f"{n} problems"
            raise UserError(f"{asked} asks problem set {self.name!r} for more {split} problems than it has "
                            f"({len(problems):,}): ask for at most that many")
        if not problems:
            raise UserError(f"problem set {self.name!r} has no {split} problems "
                            f"(rows per split: {self.counts}); see `dsctl show` of the set for skipped rows")
        return list(problems[:n] if n else problems)


def score_rows(problem_set: ProblemSet, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grade given completions against a problem set: each row names its problem by `id`
    (or `problem_id`, as grpo's completions.jsonl does) or by `prompt`, and holds a
    `completion`. One record per row: the problem, the reward, the reason and what the
    verifier read (or the traceback); a row naming no known problem has reason
    "unknown_problem", one without a completion "no_completion"."""
    from dsctl.tasks import reward

    by_key: dict[str, Problem] = {}
    for split in SPLITS:
        for p in problem_set.split(split):
            by_key[p.id] = p
            by_key.setdefault(normalized_prompt(p.prompt), p)
    out = []
    for i, row in enumerate(rows):
        key = row.get("id") or row.get("problem_id") or normalized_prompt(str(row.get("prompt", "")))
        problem = by_key.get(str(key)) or by_key.get(normalized_prompt(str(row.get("prompt", ""))))
        record: dict[str, Any] = {"row": i, "problem": problem.id if problem else str(key)[:40]}
        if problem is None:
            out.append({**record, "reward": 0.0, "reason": "unknown_problem", "detail": ""})
        elif not isinstance(row.get("completion"), str):
            out.append({**record, "reward": 0.0, "reason": "no_completion", "detail": ""})
        else:
            score = reward(problem, row["completion"], format_weight=0.0)
            out.append({**record, "reward": score["score"], "reason": score["reason"], "detail": score["detail"],
                        "expected": problem.answer})
    return out


def fit_context(problems: Sequence[Problem], tokenizer: Any, context: int, room: int) -> tuple[list[Problem], int]:
    """The problems whose chat prompt leaves `room` tokens (the completion budget) within a
    model `context` tokens long, and how many were too long to ask."""
    kept = [p for p in problems if len(tokenizer.chat_prompt(p.prompt)) + room <= context]
    return kept, len(problems) - len(kept)
