"""A safe evaluator for the small arithmetic language the tasks use.

Grammar (no unary minus, no names, no calls: nothing a model writes can run code):

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := INTEGER | "(" expr ")"

`×`, `·`, `÷` and the Unicode minus are accepted as spellings of the ASCII operators,
because a model (or a person) may well write them. Values are exact `Fraction`s, so
`7 / 2 * 2` is 7 and never 6.999…; division by zero is an error, not an infinity.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SPELLINGS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"})
_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")
#: Longer inputs are refused outright: an answer is a short expression, and the bound
#: keeps the recursive parser far from Python's recursion limit.
MAX_EXPRESSION_CHARS = 200


class ExpressionError(ValueError):
    """The text is not a well-formed expression of the grammar above."""


def tokenize(text: str) -> list[str]:
    text = text.translate(_SPELLINGS).strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("expression too long")
    tokens = []
    for number, symbol in _TOKEN.findall(text):
        if number:
            tokens.append(number)
        elif symbol.strip():
            if symbol not in "+-*/()":
                raise ExpressionError(f"unexpected character {symbol!r}")
            tokens.append(symbol)
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise ExpressionError("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise ExpressionError("missing ')'")
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"unexpected {token!r}")


def evaluate(text: str) -> tuple[Fraction, list[int]]:
    """Value of the expression and the integer literals it uses, in order of appearance."""
    tokens = tokenize(text)
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} after the expression")
    return value, parser.numbers
