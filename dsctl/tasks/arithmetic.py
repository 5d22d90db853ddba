"""Multi-digit arithmetic (a + b, a - b, a * b) with column-method worked solutions.

The solution spells out every column with its carry or borrow, the way it is done by
hand, because those intermediate steps are exactly what a small model has to learn to
get long sums right.
"""

from __future__ import annotations

import random
import re

from dsctl.tasks.base import Problem, TaskFamily, make_problem

_PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")


def _place(i: int) -> str:
    return _PLACES[i] if i < len(_PLACES) else f"column {i + 1}"


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _add_steps(a: int, b: int) -> list[str]:
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry, digit = divmod(total, 10)
        tail = f", write {digit} and carry {carry}" if carry else f", write {digit}"
        steps.append(f"The {_place(i)}: {terms} = {total}{tail}.")
    if carry:
        steps.append(f"The final carry {carry} goes in front.")
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    """Column subtraction of b from a (a >= b), naming every borrow."""
    steps, borrow = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(len(da)):
        x = int(da[i]) - borrow
        y = int(db[i]) if i < len(db) else 0
        lead = f"{da[i]} minus the borrow is {x}, and " if borrow else ""
        if x < y:
            steps.append(f"The {_place(i)}: {lead}{x} is less than {y}, so borrow 1 to make {x + 10}; {x + 10} - {y} = {x + 10 - y}.")
            borrow = 1
        else:
            steps.append(f"The {_place(i)}: {lead}{x} - {y} = {x - y}.")
            borrow = 0
    return steps


def _digit_mul_steps(a: int, d: int) -> list[str]:
    steps, carry = [], 0
    digits = str(a)[::-1]
    for i, ch in enumerate(digits):
        total = int(ch) * d + carry
        terms = f"{ch} * {d}" + (f" + {carry}" if carry else "")
        last = i == len(digits) - 1
        carry, digit = divmod(total, 10)
        if last or not carry:
            tail = f", write {total}" if last else f", write {digit}"
        else:
            tail = f", write {digit} and carry {carry}"
        steps.append(f"The {_place(i)}: {terms} = {total}{tail}.")
    return steps


def _mul_steps(a: int, b: int) -> list[str]:
    if b < 10:
        return ["Multiply each digit by " + str(b) + " from right to left.", *_digit_mul_steps(a, b)]
    steps, partials = [f"Multiply {a} by each digit of {b} and then add the partial products."], []
    for i, d in enumerate(str(b)[::-1]):
        part = a * int(d) * 10**i
        partials.append(part)
        steps.append(f"{a} * {int(d) * 10**i} = {part}.")
    steps.append(f"Add the partial products together: {' + '.join(map(str, partials))} = {a * b}.")
    return steps


def generate(rng: random.Random, min_digits: int = 2, max_digits: int = 3, ops: str = "+-*", max_mul_digits: int = 2) -> Problem:
    op = rng.choice(ops)
    a = _number(rng, min_digits, max_digits)
    if op == "*":
        b = _number(rng, 1, min(max_mul_digits, max_digits))
    else:
        b = _number(rng, min_digits, max_digits)
    if op == "-" and b > a:
        a, b = b, a  # keep results non-negative: borrows are the lesson, not signs
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    if op == "+":
        steps = ["Add the digits from right to left."] + _add_steps(a, b)
    elif op == "-":
        steps = ["Subtract the digits from right to left."] + _sub_steps(a, b)
    else:
        steps = _mul_steps(a, b)
    steps.append(f"So {a} {op} {b} = {value}.")
    return make_problem("arithmetic", {"a": a, "b": b, "op": op}, f"What is {a} {op} {b}?", str(value), " ".join(steps))


_INTEGER = re.compile(r"[-−]?\d+")


def verify(p: Problem, answer: str) -> bool:
    """Right when the answer is the exact integer; `1,234`, `= 1234` and `1 234` pass."""
    text = answer.replace(",", "").replace(" ", "").lstrip("=")
    if not _INTEGER.fullmatch(text):
        return False
    return int(text.replace("−", "-")) == int(p.answer)


FAMILY = TaskFamily(
    name="arithmetic",
    generate=generate,
    verify=verify,
    difficulty={"min_digits": 2, "max_digits": 3, "ops": "+-*", "max_mul_digits": 2},
    help="a + b, a - b, a * b with carries and borrows shown column by column",
)
