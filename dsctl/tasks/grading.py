"""How a completion is graded: where its answer is read from, which verifier judges it,
and why a reward is zero.

    problem = replace(problem, grading=Grading(verifier="number"))
    grade(problem, "<think>12 + 30</think><answer>42</answer>")   # Verdict(1.0, "correct", "42")

One grader serves every problem, built-in or a user's: a built-in family's problems
carry `Grading("family")` (the family's own verifier on the `<answer>` content), a
problem set's carry the set's grading (`dsctl.tasks.problem_set`). Verifiers:

    exact    normalized strings equal (case, spacing, a trailing period ignored)
    number   equal values: integers, decimals, fractions, 1,234 / 1 234, $, %, within
             `tolerance` (relative, and absolute near zero)
    math     symbolic equivalence of LaTeX / \\boxed{} answers (math-verify, open-r1's)
    choice   the letter of one of the problem's choices (A, (b), "B. text" or the text)
    mod:fn   a user function fn(row, completion) -> float reward, row being the problem's
             fields (prompt, answer, solution, and the source row's own)

A verdict's reason says why: "correct", "partial" (a user reward strictly between 0
and 1), "wrong", "no_answer" (nothing to read where the answer should be) or "error"
(the verifier raised; the detail holds its traceback). A reference answer a verifier
cannot read is refused when the problem set is built (`check_reference`), so no training
row ever earns a reward for an answer nobody could check.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from dsctl.errors import UserError

BUILT_IN_VERIFIERS = ("exact", "number", "math", "choice")
ANSWER_SOURCES = ("answer_tag", "boxed", "last_number", "completion")
DEFAULT_ANSWER_FROM = {"exact": "answer_tag", "number": "answer_tag", "math": "boxed", "choice": "answer_tag",
                       "family": "answer_tag"}
"""Where each verifier reads the answer unless told: the `<answer>` tags dsctl's format
ends with; for math the last \\boxed{} (inside the tags or not, as MATH-style solutions
write it), falling back to the tags. A user function reads the whole completion."""
REASONS = ("correct", "partial", "wrong", "no_answer", "error")


@dataclass(frozen=True)
class Grading:
    verifier: str = "family"
    """"family" (a built-in family's verifier), exact, number, math, choice or module:function."""
    answer_from: str = ""
    """answer_tag, boxed, last_number or completion; "" = the verifier's default."""
    tolerance: float = 1e-6
    """number: relative tolerance (absolute below 1)."""

    def __post_init__(self) -> None:
        check_verifier(self.verifier)
        if self.answer_from and self.answer_from not in ANSWER_SOURCES:
            raise ValueError(f"answer_from must be one of {', '.join(ANSWER_SOURCES)}; got {self.answer_from!r}")

    @property
    def source(self) -> str:
        return self.answer_from or DEFAULT_ANSWER_FROM.get(self.verifier, "completion")


class RewardError(UserError):
    """Too many rewards of a batch failed to compute: the stage stops, showing the first."""


class Verdict(NamedTuple):
    score: float
    """The verifier's reward: 1/0 for the built-in verifiers, a user function's float."""
    reason: str
    """One of REASONS."""
    detail: str = ""
    """What was read as the answer, or the traceback of an error."""

    @property
    def correct(self) -> bool:
        return self.reason == "correct"


def check_verifier(name: str) -> None:
    """Refuse a verifier name that is neither built in nor a module:function reference."""
    if name == "family" or name in BUILT_IN_VERIFIERS:
        return
    module, sep, function = name.partition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(f"unknown verifier {name!r}: use one of {', '.join(BUILT_IN_VERIFIERS)} "
                         "or a Python function as module:function (e.g. my_rewards:score)")


FAMILY_GRADING = Grading()
"""Built-in problems' grading: the family's verifier on the `<answer>` content."""


# -- reading the answer ---------------------------------------------------------------------------
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER_IN_TEXT = re.compile(r"[-−]?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_answer(completion: str, source: str) -> str | None:
    """The answer text of `completion` read from `source` (one of ANSWER_SOURCES); None
    when there is nothing there."""
    text = completion or ""
    if source == "answer_tag":
        found = _ANSWER_TAG.findall(text)
        return found[-1].strip() if found else None
    if source == "boxed":
        boxed = last_boxed(text)
        return boxed if boxed is not None else extract_answer(text, "answer_tag")
    if source == "last_number":
        found = _NUMBER_IN_TEXT.findall(text)
        return found[-1] if found else None
    return text.strip() or None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} (or \\fbox{…}), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


# -- the verifiers --------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Casefolded, spacing collapsed, surrounding quotes and a trailing period dropped."""
    return " ".join(text.casefold().split()).strip("\"'`").rstrip(".").strip()


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/\d+)?")


def parse_number(text: str) -> Fraction | None:
    """An exact value of `text`: 42, -3.5, 1/3, 1,234, 1 234, $12, 45%, x = 7, 2.5e3;
    None when it is not one number."""
    t = text.strip().replace("−", "-").replace("$", "").replace("\\$", "").rstrip(".")
    t = re.sub(r"^[a-zA-Z]\s*=\s*", "", t).lstrip("=").strip()
    t = re.sub(r"\\[,!; ]|\s", "", t).replace("\\%", "%")
    if t.endswith("%"):
        t = t[:-1]
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    if not _NUMBER.fullmatch(t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_equal(a: Fraction, b: Fraction, tolerance: float) -> bool:
    return a == b or math.isclose(float(a), float(b), rel_tol=tolerance, abs_tol=tolerance)


@lru_cache(maxsize=65536)
def _math_parse(text: str) -> tuple:
    from math_verify import parse

    return tuple(parse(text if ("$" in text or "\\boxed" in text) else f"${text}$"))


def _math_equal(reference: str, answer: str) -> bool:
    from math_verify import verify

    gold, pred = _math_parse(reference), _math_parse(answer)
    return bool(gold and pred and verify(list(gold), list(pred)))


_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:[.:)]|\s|$)")


def choice_letter(answer: str, choices: list[str]) -> str | None:
    """The letter `answer` picks among `choices`: a choice's own text, "B", "(b)" or "B. text"."""
    wanted = normalize_text(answer)
    for i, choice in enumerate(choices):
        if normalize_text(choice) == wanted:
            return chr(ord("A") + i)
    match = _LETTER.match(answer.strip())
    if match and ord(match.group(1).upper()) - ord("A") < len(choices):
        return match.group(1).upper()
    return None


def check_reference(verifier: str, answer: str, choices: list[str] | None = None) -> str:
    """The reference answer as the verifier will compare it (a choice's letter, say);
    ValueError when the verifier could not read it, which makes the row a counted bad
    row at build time instead of a problem no answer can ever match (or every one can)."""
    if not answer.strip():
        raise ValueError("empty reference answer")
    if verifier == "number" and parse_number(answer) is None:
        raise ValueError(f"reference {answer!r} is not a number")
    # math-verify falls back to the raw string when LaTeX does not parse: only a sympy
    # value is a reference that equivalence can be checked against
    if verifier == "math" and not any(not isinstance(v, str) for v in _math_parse(answer)):
        raise ValueError(f"math-verify cannot parse reference {answer!r}")
    if verifier == "choice":
        if not choices:
            raise ValueError("a choice problem needs its choices")
        letter = choice_letter(answer, choices)
        if letter is None and answer.strip().isdigit() and int(answer) < len(choices):
            letter = chr(ord("A") + int(answer))  # a 0-based index, as MMLU-style sets store it
        if letter is None:
            raise ValueError(f"reference {answer!r} is none of the {len(choices)} choices")
        return letter
    return answer.strip()


def _cwd_importable() -> None:
    # A recipe's reward module sits beside the recipe, where `dsctl` is run from; the
    # console script's sys.path starts at its own bin/ directory instead.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def function_source(reference: str) -> Path | None:
    """The file that defines the module of `module:function` (what a cache key hashes)."""
    import importlib.util

    _cwd_importable()
    try:
        spec = importlib.util.find_spec(reference.partition(":")[0])
    except (ImportError, ValueError):
        return None
    origin = Path(spec.origin) if spec and spec.origin else None
    return origin if origin and origin.is_file() else None


@lru_cache(maxsize=None)
def load_function(reference: str) -> Callable[[dict, str], float]:
    """The user's reward function `module:function` (the current directory is importable)."""
    module_name, _, function = reference.partition(":")
    _cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot use this verifier"
        raise ValueError(f"verifier {reference!r}: cannot import {module_name}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"verifier {reference!r}: {module_name} has no function {function}")
    return fn


def grade(problem: Any, completion: str) -> Verdict:
    """Judge one completion of `problem` (a dsctl.tasks.Problem) with the problem's own
    grading; never raises for a verifier's failure: that is a Verdict with reason "error"."""
    grading = problem.grading
    if ":" in grading.verifier:
        return _grade_with_function(problem, completion, grading.verifier)
    answer = extract_answer(completion, grading.source)
    if not answer:
        return Verdict(0.0, "no_answer")
    try:
        right = _judge(problem, answer, grading)
    except Exception:  # noqa: BLE001 - a verifier bug is counted and reported, not a crash
        return Verdict(0.0, "error", traceback.format_exc())
    return Verdict(1.0, "correct", answer) if right else Verdict(0.0, "wrong", answer)


def read_answer(problem: Any, completion: str) -> str | None:
    """The answer text the problem's grading reads from `completion` (what a majority vote
    counts); None for a user function, which reads the completion itself."""
    grading = problem.grading
    return None if ":" in grading.verifier else extract_answer(completion, grading.source)


def answer_is_right(problem: Any, answer: str) -> bool:
    """Whether an already-read answer text is right (False where the verifier fails)."""
    try:
        return _judge(problem, answer, problem.grading)
    except Exception:  # noqa: BLE001 - as in grade(): a failing verifier never passes an answer
        return False


def check_reward_errors(scores: Sequence[dict[str, Any]], max_share: float, where: str) -> int:
    """How many of `scores` (dsctl.tasks.reward results) failed to compute; raises
    RewardError with the first traceback when they are more than `max_share` of them (a
    reward that cannot be computed must not quietly train the policy on zeros)."""
    errors = [s for s in scores if s["reason"] == "error"]
    if scores and len(errors) > max_share * len(scores):
        kinds = Counter(_exception_name(s["detail"]) for s in errors)
        raise RewardError(f"{where}: {len(errors)} of {len(scores)} rewards could not be computed "
                          f"(more than max_reward_errors = {max_share:g}; "
                          + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
                          + f"); the first failure:\n{errors[0]['detail']}")
    return len(errors)


def _exception_name(trace: str) -> str:
    last = trace.strip().splitlines()[-1] if trace.strip() else ""
    return last.split(":", 1)[0] or "error"


def _judge(problem: Any, answer: str, grading: Grading) -> bool:
    name = grading.verifier
    if name == "family":
        from dsctl.tasks import get_family

        return get_family(problem.family).verify(problem, answer)
    if name == "exact":
        return normalize_text(answer) == normalize_text(problem.answer)
    if name == "number":
        value, reference = parse_number(answer), parse_number(problem.answer)
        return value is not None and reference is not None and _numbers_equal(value, reference, grading.tolerance)
    if name == "math":
        return _math_equal(problem.answer, answer)
    return choice_letter(answer, problem.data.get("choices") or []) == problem.answer


def _grade_with_function(problem: Any, completion: str, reference: str) -> Verdict:
    try:
        fn = load_function(reference)
        row = {**problem.data.get("row", {}), "id": problem.id, "prompt": problem.prompt,
               "answer": problem.answer, "solution": problem.solution}
        score = fn(row, completion)
        if isinstance(score, bool):
            score = float(score)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise TypeError(f"{reference} returned {score!r}; a reward must be a finite number")
    except Exception:  # noqa: BLE001 - the user's code: counted per reason, shown if it dominates
        return Verdict(0.0, "error", traceback.format_exc())
    score = float(score)
    reason = "correct" if score >= 1.0 else "partial" if score > 0 else "wrong"
    return Verdict(score, reason)
