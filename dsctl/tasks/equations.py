"""Linear equations in one unknown: solve a*x + b = c for an integer x."""

from __future__ import annotations

import random
import re
from fractions import Fraction

from dsctl.tasks.base import Problem, TaskFamily, exercise_split, make_problem


def _side(a: int, b: int) -> str:
    lhs = f"{a}x" if a != 1 else "x"
    return f"{lhs} + {b}" if b >= 0 else f"{lhs} - {-b}"


def generate(rng: random.Random, max_coef: int = 9, max_solution: int = 20, max_offset: int = 30) -> Problem:
    a = rng.randint(2, max_coef)
    x = rng.randint(-max_solution, max_solution)
    b = rng.choice([v for v in range(-max_offset, max_offset + 1) if v != 0])
    return problem(a, x, b)


def problem(a: int, x: int, b: int) -> Problem:
    """a*x + b = c with its solution x, worked by inverse operations."""
    c = a * x + b
    move = f"Subtract {b} from both sides" if b > 0 else f"Add {-b} to both sides"
    steps = [
        f"{move} to get {a}x = {c - b}.",
        f"Then divide both sides by {a}, so x = {x}.",
        f"Check: {a} * {x} {'+' if b > 0 else '-'} {abs(b)} = {c}, which matches the right side.",
    ]
    prompt = f"Solve for x: {_side(a, b)} = {c}."
    return make_problem("equations", _canonical(a, x, b), prompt, str(x), " ".join(steps))


def _canonical(a: int, x: int, b: int) -> dict:
    """The equation as written, a*x + b = c: its id and its split."""
    return {"a": a, "b": b, "c": a * x + b}


_NUMBER = re.compile(r"[-−]?\d+(?:\.\d+)?(?:/\d+)?")


def verify(p: Problem, answer: str) -> bool:
    """Right when the value equals x; `x = 5`, `5`, `5.0` and `10/2` all pass."""
    text = answer.replace(" ", "").lower()
    if text.startswith("x="):
        text = text[2:]
    if not _NUMBER.fullmatch(text):
        return False
    return Fraction(text.replace("−", "-")) == Fraction(p.answer)


def size(max_coef: int = 9, max_solution: int = 20, max_offset: int = 30) -> int:
    """Distinct (a, x, b) draws: a in 2..max_coef, x in ±max_solution, b in ±max_offset but 0."""
    return (max_coef - 1) * (2 * max_solution + 1) * 2 * max_offset


def enumerate_problems(split: str, max_coef: int = 9, max_solution: int = 20, max_offset: int = 30):
    """Every problem of `split` that `generate` can draw at these knobs."""
    for a in range(2, max_coef + 1):
        for x in range(-max_solution, max_solution + 1):
            for b in range(-max_offset, max_offset + 1):
                if b and exercise_split("equations", _canonical(a, x, b)) == split:
                    yield problem(a, x, b)


FAMILY = TaskFamily(
    name="equations",
    generate=generate,
    verify=verify,
    difficulty={"max_coef": 9, "max_solution": 20, "max_offset": 30},
    size=size,
    enumerate=enumerate_problems,
    help="solve a*x + b = c for integer x, one inverse operation per step",
)
