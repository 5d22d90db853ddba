"""Multi-digit arithmetic (a + b, a - b, a * b) in a compact, fixed-width scratchpad.

The worked solution restates the problem with zero-padded operands, then writes one
fixed-width step per column, right to left, with every carry or borrow written even
when it is 0, and the answer zero-padded to the result's full width:

    What is 37 + 48?   <think>37+48: 7+8+0=15 3+4+1=08</think><answer>085</answer>
    What is 52 - 7?    <think>52-07: 12-7-0=5 05-0-1=4</think><answer>45</answer>
    What is 37 * 8?    <think>37*8: 7*8+0=56 3*8+5=29</think><answer>296</answer>

Why this shape: a small transformer learns a column algorithm when each step reads its
inputs at a fixed distance back (the operand digits in the restatement, the carry as
the first digit of the step before) and every symbol is one token. A prose solution
("The ones: 7 + 8 = 15, write 5 and carry 1.") is ~90% template words, and its
variable lengths move the digits a step needs to a different distance every time;
the compact form is a third as long, so the same compute trains three times as many
problems (Lee et al., "Teaching Arithmetic to Small Transformers", ICLR 2024, find
such detailed fixed-format scratchpads learn fastest).

Addition column: `x+y+c=ss` (ss = x + y + carry-in, two digits; its first digit is the
next carry). Subtraction column: `tt-y-b=d` (tt = x, plus 10 when this column borrows,
written as two digits; its first digit is the next column's borrow). Multiplication by
a one-digit d: `x*d+c=ss`; by a longer multiplier, one such row per digit of it (the
partial product, shifted by its place), then the column addition of the partials.
"""

from __future__ import annotations

import random
import re

from dsctl.tasks.base import Problem, TaskFamily, exercise_split, make_problem


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _add_columns(x: str, y: str) -> tuple[list[str], str]:
    """Column steps of x + y (equal-width digit strings) and the sum, one digit wider."""
    steps, carry, digits = [], 0, []
    for dx, dy in zip(reversed(x), reversed(y)):
        total = int(dx) + int(dy) + carry
        steps.append(f"{dx}+{dy}+{carry}={total:02d}")
        carry, digit = divmod(total, 10)
        digits.append(str(digit))
    return steps, str(carry) + "".join(reversed(digits))


def _sub_columns(x: str, y: str) -> tuple[list[str], str]:
    """Column steps of x - y (equal-width digit strings, x >= y) and the difference."""
    steps, borrow, digits = [], 0, []
    for dx, dy in zip(reversed(x), reversed(y)):
        owes = int(int(dx) - borrow < int(dy))
        top = int(dx) + 10 * owes
        digit = top - int(dy) - borrow
        steps.append(f"{top:02d}-{dy}-{borrow}={digit}")
        borrow = owes
        digits.append(str(digit))
    return steps, "".join(reversed(digits))


def _digit_mul_columns(x: str, d: str) -> tuple[list[str], str]:
    """Column steps of x * d (one digit) and the product, one digit wider than x."""
    steps, carry, digits = [], 0, []
    for dx in reversed(x):
        total = int(dx) * int(d) + carry
        steps.append(f"{dx}*{d}+{carry}={total:02d}")
        carry, digit = divmod(total, 10)
        digits.append(str(digit))
    return steps, str(carry) + "".join(reversed(digits))


def worked_solution(a: int, b: int, op: str) -> tuple[str, str]:
    """(scratchpad, answer as the scratchpad writes it: zero-padded to full width)."""
    width = max(len(str(a)), len(str(b)))
    x = str(a).zfill(width)
    if op == "+":
        y = str(b).zfill(width)
        steps, answer = _add_columns(x, y)
    elif op == "-":
        y = str(b).zfill(width)
        steps, answer = _sub_columns(x, y)
    elif op == "*":
        x, y = str(a), str(b)
        steps, answer = _mul_steps(x, y)
    else:
        raise ValueError(f"unknown operator {op!r}")
    return f"{x}{op}{y}: " + " ".join(steps), answer


def _mul_steps(x: str, y: str) -> tuple[list[str], str]:
    if len(y) == 1:
        return _digit_mul_columns(x, y)
    steps, total = [], None
    width = len(x) + len(y)
    for place, d in enumerate(reversed(y)):
        columns, partial = _digit_mul_columns(x, d)
        partial = (partial + "0" * place).zfill(width)
        steps += [f"{x}*{d}{'0' * place}:", *columns, f"={partial}"]
        if total is None:
            total = partial
        else:
            columns, total = _add_columns(total, partial)
            total = total[-width:]  # the product has at most len(x)+len(y) digits
            steps += ["+:", *columns, f"={total}"]
    return steps, total


def generate(rng: random.Random, min_digits: int = 2, max_digits: int = 2, ops: str = "+-",
             max_mul_digits: int = 1) -> Problem:
    op = rng.choice(ops)
    a = _number(rng, min_digits, max_digits)
    if op == "*":
        b = _number(rng, 1, min(max_mul_digits, max_digits))
    else:
        b = _number(rng, min_digits, max_digits)
    if op == "-" and b > a:
        a, b = b, a  # keep results non-negative: borrows are the lesson, not signs
    return problem(a, b, op)


def problem(a: int, b: int, op: str) -> Problem:
    """`a op b` as a Problem. a + b and b + a (a * b and b * a) are one exercise: they
    share a split, so a commuted twin of a test problem is never trained on."""
    solution, answer = worked_solution(a, b, op)
    return make_problem("arithmetic", {"a": a, "b": b, "op": op}, f"What is {a} {op} {b}?", answer, solution,
                        _exercise(a, b, op))


def _exercise(a: int, b: int, op: str) -> dict:
    return {"a": min(a, b), "b": max(a, b), "op": op} if op in "+*" else {"a": a, "b": b, "op": op}


def _values(min_digits: int, max_digits: int) -> range:
    """The values `_number` can draw (one digit includes 0)."""
    return range(0 if min_digits == 1 else 10 ** (min_digits - 1), 10**max_digits)


def enumerate_problems(split: str, min_digits: int = 2, max_digits: int = 2, ops: str = "+-",
                       max_mul_digits: int = 1):
    """Every problem of `split` that `generate` can draw at these knobs."""
    values = _values(min_digits, max_digits)
    for op in sorted(set(ops)):
        right = _values(1, min(max_mul_digits, max_digits)) if op == "*" else values
        for a in values:
            for b in right:
                if (op != "-" or a >= b) and exercise_split("arithmetic", _exercise(a, b, op)) == split:
                    yield problem(a, b, op)


def size(min_digits: int = 2, max_digits: int = 2, ops: str = "+-", max_mul_digits: int = 1) -> int:
    """Distinct problems: ordered pairs for + (a+b and b+a are two problems), pairs with
    a >= b for -, and a times a shorter multiplier for *."""
    n = len(_values(min_digits, max_digits))
    counts = {"+": n * n, "-": n * (n + 1) // 2, "*": n * len(_values(1, min(max_mul_digits, max_digits)))}
    return sum(counts[op] for op in set(ops))


_INTEGER = re.compile(r"[-−]?\d+")


def verify(p: Problem, answer: str) -> bool:
    """Right when the answer is the exact integer; `085`, `85`, `1,234`, `= 1234` and `1 234` pass."""
    text = answer.replace(",", "").replace(" ", "").lstrip("=")
    if not _INTEGER.fullmatch(text):
        return False
    return int(text.replace("−", "-")) == int(p.answer)


FAMILY = TaskFamily(
    name="arithmetic",
    generate=generate,
    verify=verify,
    difficulty={"min_digits": 2, "max_digits": 2, "ops": "+-", "max_mul_digits": 1},
    size=size,
    enumerate=enumerate_problems,
    help="a + b, a - b, a * b in a compact fixed-width column scratchpad (every carry and borrow written)",
)
