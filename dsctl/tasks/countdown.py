"""Countdown-style puzzles: reach a target from given numbers with + - * /.

Many expressions can be right, so the verifier never compares strings: it parses the
proposed expression with the safe evaluator in `expr.py`, checks that it uses only the
given numbers (each at most as often as it was given) and that its exact value is the
target.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from dsctl.tasks.base import Problem, TaskFamily, make_problem
from dsctl.tasks.expr import ExpressionError, evaluate

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(rng: random.Random, left: int, right: int) -> tuple[str, int] | None:
    """A random operator that keeps every intermediate a positive integer."""
    options = [("+", left + right), ("*", left * right)]
    if left > right:
        options.append(("-", left - right))
    if right > 1 and left % right == 0:
        options.append(("/", left // right))
    return rng.choice(options)


def _chain(rng: random.Random, picked: list[int]) -> tuple[str, int, list[str]]:
    """Fold the picked numbers left to right into an expression, its value and steps."""
    expression, value, top_op = str(picked[0]), picked[0], None
    steps = []
    for number in picked[1:]:
        op, result = _combine(rng, value, number)
        if top_op and _PRECEDENCE[top_op] < _PRECEDENCE[op]:
            expression = f"({expression})"
        steps.append(f"{value} {op} {number} = {result}.")
        expression, value, top_op = f"{expression} {op} {number}", result, op
    return expression, value, steps


def generate(rng: random.Random, count: int = 4, max_number: int = 25, max_target: int = 200) -> Problem:
    while True:
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        picked = rng.sample(numbers, rng.randint(2, count))
        expression, target, steps = _chain(rng, picked)
        # A target equal to a given number is solved without arithmetic; skip it.
        if 1 <= target <= max_target and target not in numbers:
            break
    shown = ", ".join(map(str, numbers))
    prompt = f"Using the numbers {shown}, make {target}. You may use + - * / and each number at most once."
    solution = " ".join([f"Try combining {', '.join(map(str, picked))}.", *steps, f"That reaches {target}."])
    canonical = {"numbers": sorted(numbers), "target": target}
    return make_problem("countdown", canonical, prompt, expression, solution)


def verify(p: Problem, answer: str) -> bool:
    """Right when the expression evaluates exactly to the target using given numbers only.

    `expr = target` is accepted (the part before `=` is evaluated); a right-hand side
    that is not the target makes the answer wrong.
    """
    lhs, _, rhs = answer.partition("=")
    if rhs.strip() and rhs.strip() != str(p.data["target"]):
        return False
    try:
        value, used = evaluate(lhs)
    except ExpressionError:
        return False
    if Counter(used) - Counter(p.data["numbers"]):
        return False  # a number that was not given, or one used too often
    return value == p.data["target"]


def size(count: int = 4, max_number: int = 25, max_target: int = 200) -> int:
    """An upper bound: every multiset of `count` numbers with every target (not every
    target is reachable from every multiset, so fewer exist)."""
    return math.comb(max_number + count - 1, count) * max_target


FAMILY = TaskFamily(
    name="countdown",
    generate=generate,
    verify=verify,
    difficulty={"count": 4, "max_number": 25, "max_target": 200},
    size=size,
    help="reach a target from given numbers with + - * /, each number at most once",
)
