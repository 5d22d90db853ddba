"""Config pieces of the stages that work on task problems, each field declared once.

    FamiliesConfig     which task families (decontaminate protects their dev and test splits)
    TaskConfig         which families, at which difficulty, and how many failed rewards a
                       stage tolerates (every stage that uses problems)
    TrainSplitConfig   how many worked or answer-only problems a stage trains on
    EvalSplitConfig    how many held-out (dev or test) problems a stage scores
    CompletionConfig   how long a decoded completion may be
    SamplingConfig     CompletionConfig + temperature and top-p
    PasskeyConfig      how many passkey documents a retrieval measurement takes

Stages inherit the pieces they use and change defaults with
`dsctl.configs.stage_defaults`; `train_draw` and `eval_draw` draw the problems they name,
from the families or, when the stage has a `problems` input, from that problem set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from dsctl.tasks import FAMILIES, Problem, split_problems
from dsctl.tasks.base import YARDSTICK_SEED, split_capacity, whole_split


@dataclass
class FamiliesConfig:
    families: list[str] = field(default_factory=lambda: ["arithmetic"])
    """Task families (keys of dsctl.tasks.FAMILIES: arithmetic, countdown, equations)."""

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown task families {sorted(unknown)}; known: {', '.join(sorted(FAMILIES))}")


@dataclass
class TaskConfig(FamiliesConfig):
    difficulty: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-family difficulty overrides, e.g. {arithmetic = {max_digits = 3}} ({} = each
    family's defaults: 2-digit + and − for arithmetic). Post-training stages and eval
    should name the same difficulty, so each measures the distribution the others train on."""
    max_reward_errors: float = 0.1
    """Largest share of a batch's rewards that may fail to compute (a verifier or your reward
    function raising) before the stage stops and shows the first traceback; failed rows
    score 0 and are counted in the stage's metrics."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.max_reward_errors <= 1.0:
            raise ValueError(f"max_reward_errors must be a share in [0, 1], got {self.max_reward_errors}")
        unknown = set(self.difficulty) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown task families {sorted(unknown)}; known: {', '.join(sorted(FAMILIES))}")
        for family, knobs in self.difficulty.items():
            extra = set(knobs) - set(FAMILIES[family].difficulty)
            if extra:
                raise ValueError(f"difficulty.{family}: unknown knob(s) {sorted(extra)}; "
                                 f"known: {', '.join(sorted(FAMILIES[family].difficulty))}")
        # The split-size pieces below are always mixed in beside TaskConfig; checking them
        # here refuses an impossible count when the recipe is read, not hours into a run.
        if getattr(self, "eval_problems", None) == 0:
            unlisted = [f for f in self.families if FAMILIES[f].enumerate is None]
            if unlisted:
                raise ValueError(f"eval_problems = 0 scores the whole {self.eval_split} split, but "
                                 f"{', '.join(unlisted)} cannot list its problems: give a number instead")
        for name, split in (("train_problems", "train_split"), ("eval_problems", "eval_split")):
            if hasattr(self, name):
                check_split_sizes(name, self.families, getattr(self, split),
                                  spread(getattr(self, name), len(self.families)), self.difficulty)


@dataclass
class TrainSplitConfig:
    train_problems: int = 4000
    """Training problems the stage draws, spread evenly over `families`: from the
    `worked` split for sft and distill (worked solutions to learn from), from the
    `answer_only` split for grpo and rejection_sample (prompts whose answers alone are
    used); the problems stage writes this many of each. From a problem set: the first
    this many of the split."""

    train_split: ClassVar[str] = "worked"
    """The split `train_problems` come from; a stage that trains on answers alone says
    "answer_only"."""


@dataclass
class EvalSplitConfig:
    eval_problems: int = 64
    """Held-out problems scored, spread evenly over `families`: the `dev` split for a
    stage's summary, the `test` split for eval, drawn the same way at every seed. 0 =
    the whole split (families that can list their problems). A paired difference of
    pass@1 between two checkpoints has a standard error of about 0.3/√eval_problems:
    400 resolve a gain of ~0.03 at 2 SE, 64 only one of ~0.08."""

    eval_split: ClassVar[str] = "dev"
    """The split `eval_problems` come from: dev for every choice made while building
    (stage summaries, tuning), test for eval's report."""


@dataclass
class CompletionConfig:
    max_new_tokens: int = 64
    """Longest completion in tokens; one cut here has no closed answer and counts as wrong
    (a 2-digit arithmetic scratchpad with its tags is ~31 tokens: raise it with the difficulty)."""


@dataclass
class SamplingConfig(CompletionConfig):
    temperature: float = 0.6
    """Sampling temperature (DeepSeek-R1 samples and evaluates at 0.6)."""
    top_p: float = 0.95
    """Nucleus sampling: draw from the smallest token set with this much probability (1.0 = off)."""


@dataclass
class PasskeyConfig:
    passkey_trials: int = 8
    """Passkey documents per length, needles spread evenly over the context."""


def spread(n: int, parts: int) -> list[int]:
    """`n` split evenly over `parts`, the first ones taking the remainder."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def check_split_sizes(name: str, families: Sequence[str], split: str, counts: Sequence[int],
                      difficulty: dict[str, dict] | None = None) -> None:
    """Raise ValueError when a family is asked for more distinct `split` problems than the
    split holds at its difficulty (`counts[i]` for `families[i]`; `name` is the field)."""
    difficulty = difficulty or {}
    for family, n in zip(families, counts):
        knobs = difficulty.get(family, {})
        capacity = split_capacity(FAMILIES[family], split, knobs)
        if n > capacity:
            total = FAMILIES[family].size(**{**FAMILIES[family].difficulty, **knobs})
            at = f"difficulty {knobs}" if knobs else "its default difficulty"
            raise ValueError(
                f"{name} asks {family} for {n:,} distinct {split} problems, but at {at} its {split} split "
                f"holds about {capacity:,} ({total:,} problems in all): ask for fewer, raise the "
                f"difficulty, or leave {family} out of `families`")


def held_out_problems(families: Sequence[str], split: str, n: int,
                      difficulty: dict[str, dict] | None = None) -> list[Problem]:
    """`n` problems of the dev or test split, the same at every run seed (the yardstick
    does not move with training); n = 0 takes each family's whole split."""
    if split not in ("dev", "test"):
        raise ValueError(f"held-out problems come from dev or test, not {split!r}")
    if n:
        return task_problems(families, split, n, YARDSTICK_SEED, difficulty)
    difficulty = difficulty or {}
    return [p for f in families for p in whole_split(FAMILIES[f], split, difficulty.get(f))]


def train_draw(cfg: Any, seed: int, problem_set: Any = None) -> list[Problem]:
    """A stage's `train_problems` of its `train_split`: from `problem_set` (a
    dsctl.tasks.problem_set.ProblemSet) when it has one, else from its families at `seed`."""
    if problem_set is not None:
        return problem_set.draw(cfg.train_split, cfg.train_problems, "train_problems") if cfg.train_problems else []
    return task_problems(cfg.families, cfg.train_split, cfg.train_problems, seed, cfg.difficulty)


def eval_draw(cfg: Any, problem_set: Any = None) -> list[Problem]:
    """A stage's `eval_problems` of its `eval_split` (dev or test), from `problem_set` when
    it has one, else its families' yardstick draw."""
    if problem_set is not None:
        return problem_set.draw(cfg.eval_split, cfg.eval_problems, "eval_problems")
    return held_out_problems(cfg.families, cfg.eval_split, cfg.eval_problems, cfg.difficulty)


def task_problems(families: Sequence[str], split: str, n: int, seed: int,
                  difficulty: dict[str, dict] | None = None) -> list[Problem]:
    """`n` problems of `split` spread evenly over `families` (the first ones get the
    remainder), interleaved family by family so any prefix is a balanced sample.
    `difficulty` maps a family name to its difficulty overrides."""
    if not families:
        raise ValueError("no task families given")
    difficulty = difficulty or {}
    unknown = set(difficulty) - set(families)
    if unknown:
        raise ValueError(f"difficulty names families not in use: {sorted(unknown)}; families: {list(families)}")
    per = spread(n, len(families))
    lists = [split_problems(f, split, k, seed, difficulty.get(f)) for f, k in zip(families, per)]
    return [lst[i] for i in range(max(per, default=0)) for lst in lists if i < len(lst)]
