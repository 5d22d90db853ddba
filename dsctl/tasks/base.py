"""What every reasoning task family shares: the Problem record, the splits,
the answer format and the reward.

A family is a generator (random numbers -> Problem with a worked solution) plus a
verifier (Problem, answer text -> bool). Everything else — splits, tags, rewards,
pretraining documents — is defined once here so SFT, GRPO, eval and the source stage
all see the same problems the same way.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

from dsctl.tasks.grading import FAMILY_GRADING, Grading

Split = Literal["worked", "answer_only", "dev", "test"]

#: Hash buckets (out of 1000) of each split. A problem's split depends only on the
#: canonical form of its exercise (a + b and b + a are one exercise), never on seed or
#: position, so no seed or size setting can move a problem between splits:
#:   test         eval's report: the yardstick, the same problems at every seed
#:   dev          stage summaries and every choice of settings
#:   worked       the only problems whose worked solutions appear anywhere in training
#:                (the world's worksheets, sft's cold start, distill's worked examples)
#:   answer_only  problems trained on by their answers alone (grpo's pool, rejection
#:                sampling's prompts, the RFT control): no worked solution of one is
#:                ever written into training text
SPLIT_BUCKETS: dict[str, range] = {
    "test": range(0, 100), "dev": range(100, 200), "worked": range(200, 600), "answer_only": range(600, 1000),
}
SPLITS: tuple[str, ...] = tuple(SPLIT_BUCKETS)

#: The draw of dev and test problems, whatever the run's seed: a training seed changes
#: the model, not the yardstick it is measured with.
YARDSTICK_SEED = 0

#: Default weight of the format reward in `reward()["total"]`: large enough to teach the
#: tags to a model that has not seen them, small enough that a well-formatted wrong answer
#: never beats a right one. GRPO after sft sets it to 0 (see `GRPOConfig.format_weight`).
FORMAT_WEIGHT = 0.1


@dataclass(frozen=True)
class Problem:
    family: str
    """Name of the task family (a key of FAMILIES)."""
    id: str
    """Stable id: family plus a hash of the canonical problem (same problem, same id)."""
    prompt: str
    """The question as posed to a model."""
    answer: str
    """The canonical answer, as the worked solution writes it (arithmetic zero-pads it to
    the result's full width: `085`); verifiers compare values, so `85` is right too."""
    solution: str
    """Step-by-step worked reasoning, without tags."""
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Family-specific numbers the verifier needs."""
    split: Split = field(default="worked", compare=False, hash=False)
    """The split the problem's exercise hashes to (see SPLIT_BUCKETS)."""
    grading: Grading = field(default=FAMILY_GRADING, compare=False, hash=False)
    """How a completion is judged: the family's verifier for built-in problems, the
    problem set's verifier for a user's (dsctl.tasks.grading)."""


@dataclass(frozen=True)
class TaskFamily:
    name: str
    generate: Callable[..., Problem]
    """generate(rng, **difficulty) -> Problem."""
    verify: Callable[[Problem, str], bool]
    """verify(problem, answer_text) -> whether the answer is correct."""
    difficulty: dict[str, Any]
    """The generator's difficulty knobs and their defaults."""
    size: Callable[..., int]
    """size(**difficulty) -> how many distinct problems the generator can draw at these
    knobs: exact where counting is simple, an upper bound otherwise (countdown)."""
    help: str = ""
    enumerate: Callable[..., Iterable[Problem]] | None = None
    """enumerate(split, **difficulty) -> every problem of `split` at these knobs, where they
    can be listed (arithmetic, equations): what lets eval score, and decontaminate
    protect, a whole split. Only the split's members are built."""


def canonical_hash(family: str, canonical: dict[str, Any]) -> str:
    blob = json.dumps({"family": family, **canonical}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def make_problem(family: str, canonical: dict[str, Any], prompt: str, answer: str, solution: str,
                 exercise: dict[str, Any] | None = None) -> Problem:
    """A Problem whose id is a function of `canonical` and whose split is a function of
    `exercise`, the form shared by problems that are one exercise (default: canonical)."""
    digest = canonical_hash(family, canonical)
    return Problem(family, f"{family}-{digest[:12]}", prompt, answer, solution, dict(canonical),
                   exercise_split(family, exercise or canonical))


def exercise_split(family: str, exercise: dict[str, Any]) -> Split:
    """The split of an exercise's canonical form, known before its problem is built."""
    bucket = int(canonical_hash(family, exercise)[:8], 16) % 1000
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def split_of(problem: Problem) -> Split:
    return problem.split


def split_capacity(family: TaskFamily, split: Split, difficulty: dict | None = None) -> int:
    """About how many distinct problems `split` holds at `difficulty`: the family's size
    times the split's share of hash buckets. What `sample_split` can be asked for at most,
    known without drawing a single problem, so a recipe is refused before it runs."""
    return family.size(**_knobs(family, difficulty)) * len(SPLIT_BUCKETS[split]) // 1000


def whole_split(family: TaskFamily, split: Split, difficulty: dict | None = None) -> list[Problem]:
    """Every problem of `split` at `difficulty`, in a fixed order (by id)."""
    if family.enumerate is None:
        raise ValueError(f"{family.name} cannot list its problems, so it has no whole {split} split to use; "
                         "ask for a number of problems instead")
    return sorted(family.enumerate(split, **_knobs(family, difficulty)), key=lambda p: p.id)


def _knobs(family: TaskFamily, difficulty: dict | None) -> dict[str, Any]:
    knobs = {**family.difficulty, **(difficulty or {})}
    unknown = set(knobs) - set(family.difficulty)
    if unknown:
        raise ValueError(f"{family.name}: unknown difficulty knob(s) {sorted(unknown)}; "
                         f"known: {sorted(family.difficulty)}")
    return knobs


def sample_split(family: TaskFamily, split: Split, n: int, seed: int, difficulty: dict | None = None) -> list[Problem]:
    """`n` distinct problems of `split`, deterministic in (family, split, n, seed, difficulty)."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    knobs = _knobs(family, difficulty)
    # The split name is part of the stream seed so the splits draw independently.
    rng = random.Random(f"{family.name}:{split}:{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    # A small problem space (e.g. 1-digit sums) cannot yield every n; stop instead of
    # spinning forever once draws stop finding anything new.
    max_draws = 50 * n + 1000
    for _ in range(max_draws):
        if len(problems) == n:
            break
        problem = family.generate(rng, **knobs)
        if problem.id in seen or problem.split != split:
            continue
        seen.add(problem.id)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(
            f"{family.name}: only {len(problems)} distinct {split} problems found for n={n} "
            f"with difficulty {knobs}; raise the difficulty or ask for fewer"
        )
    return problems


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>(?:(?!<think>|</think>).)*</think>"
                     r"\s*<answer>(?:(?!<answer>).)*?</answer>\s*", re.DOTALL)


def parse_answer(text: str) -> str | None:
    """Content of the last `<answer>…</answer>`, stripped; None when there is none."""
    found = _ANSWER.findall(text or "")
    return found[-1].strip() if found else None


def reasoning_target(p: Problem) -> str:
    return "<think>" + p.solution + "</think><answer>" + p.answer + "</answer>"


def well_formatted(completion: str) -> bool:
    """Exactly one think block followed by exactly one answer, nothing else around them."""
    return bool(_FORMAT.fullmatch(completion or "")) and completion.count("<answer>") == 1


_DOC_OPENINGS = ("Question: {q}", "Problem: {q}", "{q}", "Exercise. {q}", "Q: {q}", "Here is a problem. {q}")
_DOC_BRIDGES = ("", "Let's work it out step by step.", "Solution:", "Worked solution:", "Let us think it through.")


def document(p: Problem, rng: random.Random) -> str:
    """A pretraining document: the question, then the worked solution and the answer
    in the same tags the model is later asked to produce."""
    opening = rng.choice(_DOC_OPENINGS).format(q=p.prompt)
    bridge = rng.choice(_DOC_BRIDGES)
    head = f"{opening}\n{bridge}\n" if bridge else f"{opening}\n"
    return head + reasoning_target(p)
