"""Text normalization and the heuristic quality rules of the clean stage.

Each rule is a small named function `rule(doc, rules) -> bool` (True = reject) with its
threshold in `CleanRules` (dsctl/data/clean.py) under a matching name; `RULES` lists them in the order
they are tried, and the first that fires is the row's `reason`. The rules follow
Gopher (MassiveText), C4 and FineWeb, with their thresholds as defaults. One deliberate
change: Gopher's n-gram repetition rules only judge documents of 100+ words, because in
a 60-word document a single repeated phrase already crosses Gopher's limits (tuned on
long web pages), and the default world's docstrings and worked solutions are that short.

Reasoning-task documents are digit- and symbol-heavy on purpose ("347 + 26 = 373"). So
that the word-shape rules judge only the language around the math, they look at the
*prose view* of a document: the `<think>`/`<answer>` tags removed and math words
(numbers, `3x`, operators, and expressions of digits and operators like `16-8-0=8`)
left out. A document of math alone has no prose words and
fails the stop-word rule; a worked solution written in sentences passes. The n-gram
repetition rules, in contrast, count numbers as words ("carry 1" and "carry 2" are
different steps). No row is exempt by a label: the same rules apply to a user's corpus.
Measured on the default world: 0 of 2,400 task documents and ~3% of docstring prose
documents are rejected, and every planted junk/boilerplate/stub/non-English row is.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from dsctl.data.clean import CleanRules

_TAGS = re.compile(r"</?(?:think|answer)>")
_MATH_WORD = re.compile(r"[-+−]?\d+(?:[-+*/×÷=<>^−.,]+\d+)*x?|[-+*/×÷=<>^−]+")
_EDGE_PUNCT = ".,;:!?()[]\"'"
_PLAIN_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", ":")
#: Gopher's stop words: real English prose all but always contains a few of them.
STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
#: A line is a bullet item when it starts with one of these (the ASCII ones followed by a
#: space, so reST/markdown emphasis such as "*name* is ..." is not a bullet).
_BULLET = re.compile(r"^(?:[•·‣▪◦]|[-*–] )")
#: Multi-word phrases of site chrome (C4's list, narrowed so docs *about* cookies or
#: JavaScript survive): a short line holding one is boilerplate.
BOILERPLATE_PHRASES = (
    "cookie policy", "use cookies", "accept all cookies", "cookie preferences", "cookie settings",
    "enable javascript", "privacy policy", "terms of use", "terms of service", "all rights reserved",
    "subscribe to", "newsletter", "sign up", "log in |", "skip to main content", "read more...",
    "powered by", "share this", "follow us", "lorem ipsum", "back to top",
)


def normalize(text: str) -> str:
    """NFC, control and zero-width characters removed, whitespace repaired."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = _CONTROL.sub("", text)
    lines = [re.sub(r"[ \u00a0\u2000-\u200a\u3000]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def is_math_word(word: str) -> bool:
    core = word.strip(_EDGE_PUNCT)
    return bool(core) and bool(_MATH_WORD.fullmatch(core))


@dataclass
class Doc:
    """One normalized document and the views the rules share (computed once, lazily)."""

    text: str
    language: str | None = None
    """Set by language ID when it ran: English-only rules skip other languages."""

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def lines(self) -> list[str]:
        return [line for line in self.text.split("\n") if line.strip()]

    @cached_property
    def prose_lines(self) -> list[str]:
        untagged = (_TAGS.sub(" ", line).strip() for line in self.lines)
        return [line for line in untagged if line]

    @cached_property
    def prose_words(self) -> list[str]:
        return [w for w in _TAGS.sub(" ", self.text).split() if not is_math_word(w)]

    @cached_property
    def plain_words(self) -> list[str]:
        """Prose words that are ordinary words (letters, inner apostrophes or hyphens):
        no identifiers like `os.sendfile()` or `__init__`, which confuse language ID."""
        return [w for w in self.prose_words if _PLAIN_WORD.fullmatch(w.strip(_EDGE_PUNCT))]

    @cached_property
    def lower_words(self) -> list[str]:
        words = (w.strip(_EDGE_PUNCT).lower() for w in _TAGS.sub(" ", self.text).split())
        return [w for w in words if w]

    @cached_property
    def lower_prose_words(self) -> list[str]:
        words = (w.strip(_EDGE_PUNCT).lower() for w in self.prose_words)
        return [w for w in words if w]


Rule = Callable[[Doc, "CleanRules"], bool]


def min_words(doc: Doc, rules: CleanRules) -> bool:
    return len(doc.words) < rules.min_words


def max_words(doc: Doc, rules: CleanRules) -> bool:
    return len(doc.words) > rules.max_words


#: Site chrome comes in short lines; a paragraph that mentions a privacy policy is text.
BOILERPLATE_MAX_LINE_WORDS = 15


def boilerplate(doc: Doc, rules: CleanRules) -> bool:
    hits = sum(
        len(line.split()) <= BOILERPLATE_MAX_LINE_WORDS and any(p in line.lower() for p in BOILERPLATE_PHRASES)
        for line in doc.lines
    )
    return hits / len(doc.lines) > rules.max_boilerplate_line_fraction


def stop_words(doc: Doc, rules: CleanRules) -> bool:
    """Gopher's stop words are English: a document identified as another (allowed)
    language is not judged by them."""
    if doc.language not in (None, "en"):
        return False
    return sum(w in STOP_WORDS for w in doc.lower_prose_words) < rules.min_stop_words


def mean_word_length(doc: Doc, rules: CleanRules) -> bool:
    words = doc.lower_prose_words
    mean = sum(map(len, words)) / len(words) if words else 0.0
    return not rules.min_mean_word_length <= mean <= rules.max_mean_word_length


def symbol_word_ratio(doc: Doc, rules: CleanRules) -> bool:
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
    return symbols / max(1, len(doc.words)) > rules.max_symbol_word_ratio


def alpha_words(doc: Doc, rules: CleanRules) -> bool:
    words = doc.prose_words
    with_letter = sum(any(c.isalpha() for c in w) for w in words)
    return with_letter / max(1, len(words)) < rules.min_alpha_word_fraction


def non_alpha_chars(doc: Doc, rules: CleanRules) -> bool:
    chars = "".join(doc.prose_words)
    other = sum(not c.isalpha() for c in chars)
    return other / max(1, len(chars)) > rules.max_non_alpha_char_fraction


def bullet_lines(doc: Doc, rules: CleanRules) -> bool:
    bullets = sum(bool(_BULLET.match(line.lstrip())) for line in doc.lines)
    return bullets / len(doc.lines) > rules.max_bullet_line_fraction


def ellipsis_lines(doc: Doc, rules: CleanRules) -> bool:
    ends = sum(line.rstrip().endswith(("...", "…")) for line in doc.lines)
    return ends / len(doc.lines) > rules.max_ellipsis_line_fraction


def duplicate_lines(doc: Doc, rules: CleanRules) -> bool:
    counts = Counter(doc.lines)
    repeated = [(line, n - 1) for line, n in counts.items() if n > 1]
    dup_lines = sum(n for _, n in repeated) / len(doc.lines)
    dup_chars = sum(len(line) * n for line, n in repeated) / max(1, len(doc.text))
    return dup_lines > rules.max_duplicate_line_fraction or dup_chars > rules.max_duplicate_line_char_fraction


def top_ngrams(doc: Doc, rules: CleanRules) -> bool:
    """Gopher: the most frequent 2/3/4-gram must not cover too many characters.

    Over all words, numbers included: "carry 1" and "carry 2" are different steps,
    not a repeated phrase."""
    words = doc.lower_words
    if len(words) < rules.repetition_min_words:
        return False
    total = sum(map(len, words))
    for n, limit in zip((2, 3, 4), rules.max_top_ngram_char_fraction):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count > 1 and count * sum(map(len, gram)) / max(1, total) > limit:
                return True
    return False


def duplicate_ngrams(doc: Doc, rules: CleanRules) -> bool:
    """Gopher: characters inside repeated 5..10-grams must stay below per-n limits."""
    words = doc.lower_words
    if len(words) < rules.repetition_min_words:
        return False
    total = sum(map(len, words))
    for n, limit in zip(range(5, 11), rules.max_duplicate_ngram_char_fraction):
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        counts = Counter(grams)
        covered = [False] * len(words)
        for i, gram in enumerate(grams):
            if counts[gram] > 1:
                covered[i : i + n] = [True] * n
        dup_chars = sum(len(w) for w, c in zip(words, covered) if c)
        if dup_chars / max(1, total) > limit:
            return True
    return False


def line_punctuation(doc: Doc, rules: CleanRules) -> bool:
    """FineWeb: too few lines end like a sentence (menus, lists of links)."""
    lines = doc.prose_lines or doc.lines
    ended = sum(line.endswith(_TERMINAL) for line in lines)
    return ended / len(lines) < rules.min_line_punctuation_fraction


def short_lines(doc: Doc, rules: CleanRules) -> bool:
    """FineWeb: a page of mostly very short lines is navigation, not text."""
    short = sum(len(line) <= rules.short_line_chars for line in doc.lines)
    return short / len(doc.lines) > rules.max_short_line_fraction


#: The heuristic rules in the order they are tried: size and chrome first, then the
#: character-level junk rules, then (language ID runs here, before `LANGUAGE_ID_BEFORE`)
#: the word- and line-level rules, some of which assume English.
RULES: tuple[Rule, ...] = (
    min_words, max_words, boilerplate, symbol_word_ratio, alpha_words, non_alpha_chars,
    stop_words, mean_word_length, bullet_lines, ellipsis_lines, duplicate_lines,
    top_ngrams, duplicate_ngrams, line_punctuation, short_lines,
)
LANGUAGE_ID_BEFORE = "stop_words"
