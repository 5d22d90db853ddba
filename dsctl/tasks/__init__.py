"""Verifiable reasoning tasks: generators with worked solutions, answer parsing, rewards.

    from dsctl.tasks import FAMILIES, split_problems, reasoning_target, reward
    problems = split_problems("arithmetic", "train", n=100, seed=0)
    reward(problems[0], "<think>...</think><answer>42</answer>")

SFT trains on `reasoning_target(p)`, GRPO scores completions with `reward`, eval counts
`verify_completion`, and the source stage writes `problem_document`s into pretraining
text — all on the same problems, with train and eval disjoint by construction.
"""

from __future__ import annotations

import random
from typing import Any

from dsctl.tasks import arithmetic, countdown, equations
from dsctl.tasks.base import (
    FORMAT_WEIGHT,
    Problem,
    Split,
    TaskFamily,
    document,
    parse_answer,
    reasoning_target,
    sample_split,
    split_of,
    well_formatted,
)
from dsctl.tasks.grading import grade

FAMILIES: dict[str, TaskFamily] = {f.name: f for f in (arithmetic.FAMILY, countdown.FAMILY, equations.FAMILY)}


def get_family(name: str) -> TaskFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family '{name}'; known: {', '.join(sorted(FAMILIES))}") from None


def split_problems(family: str, split: Split, n: int, seed: int, difficulty: dict | None = None) -> list[Problem]:
    """`n` distinct problems of `split` ("train" | "eval"); deterministic per seed.

    Train and eval never share a problem: the split is a hash of the canonical problem.
    `difficulty` overrides the family's knobs (see `get_family(name).difficulty`).
    """
    return sample_split(get_family(family), split, n, seed, difficulty)


def verify_completion(p: Problem, completion: str) -> bool:
    """Whether `completion` answers `p` correctly, as the problem's grading reads it."""
    return grade(p, completion).correct


def reward(p: Problem, completion: str, format_weight: float = FORMAT_WEIGHT) -> dict[str, Any]:
    """score (the verifier's reward: 0/1, or a user function's float), correct (0/1),
    format (0/1: one think block then one answer), total = score + format_weight · format,
    reason (why: dsctl.tasks.grading.REASONS) and detail (the answer read, or an error's
    traceback)."""
    verdict = grade(p, completion)
    fmt = int(well_formatted(completion))
    return {"score": verdict.score, "correct": int(verdict.correct), "format": fmt,
            "total": verdict.score + format_weight * fmt, "reason": verdict.reason, "detail": verdict.detail}


def problem_document(p: Problem, rng: random.Random) -> str:
    """A natural pretraining document: question, worked solution, tagged answer."""
    return document(p, rng)


__all__ = [
    "FAMILIES", "FORMAT_WEIGHT", "Problem", "TaskFamily", "get_family", "parse_answer", "problem_document",
    "reasoning_target", "reward", "split_of", "split_problems", "verify_completion",
]
