"""The clean stage's filter: normalize each row, then reject it by the first rule that
fires — the heuristic rules of `text_rules`, then language ID, then the optional
quality classifier. Per-rule counts fall out of `Cleaner.counts`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from dsctl.data.langid import LanguageIdentifier
from dsctl.data.quality import QualityModel
from dsctl.data.text_rules import LANGUAGE_ID_BEFORE, RULES, Doc, normalize

_HEURISTICS = tuple(rule.__name__ for rule in RULES)
#: Every reason a row can be rejected for, in the order the checks run.
RULE_NAMES = (
    *_HEURISTICS[: _HEURISTICS.index(LANGUAGE_ID_BEFORE)], "language",
    *_HEURISTICS[_HEURISTICS.index(LANGUAGE_ID_BEFORE):], "quality",
)


class Cleaner:
    """`judge(row) -> (reason or None, row with normalized text)`; counts every verdict."""

    def __init__(self, cfg: Any, quality: QualityModel | None = None):
        self.cfg = cfg
        self.quality = quality
        use_langid = cfg.langid_threshold > 0 and "language" not in cfg.disabled_rules
        self.langid = LanguageIdentifier(cfg.langid_model or None) if use_langid else None
        named = {rule.__name__: (lambda doc, rule=rule: rule(doc, cfg)) for rule in RULES}
        named["language"] = self._wrong_language if use_langid else None
        named["quality"] = self._low_quality if quality is not None else None
        self.checks: list[tuple[str, Callable[[Doc], bool]]] = [
            (name, named[name]) for name in RULE_NAMES if named[name] is not None and name not in cfg.disabled_rules
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
        return language not in self.cfg.languages or probability < self.cfg.langid_threshold

    def _low_quality(self, doc: Doc) -> bool:
        return self.quality.score(doc.text) < self.cfg.quality_threshold
