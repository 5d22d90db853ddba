"""The clean stage's filter: normalize each row, then reject it by the first rule that
fires — the heuristic rules of `text_rules`, then language ID, then the optional
quality classifier. Per-rule counts fall out of `Cleaner.counts`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from dsctl.data.langid import LanguageIdentifier
from dsctl.data.quality import QualityModel
from dsctl.data.text_rules import RULES, Doc, normalize

RULE_NAMES = tuple(rule.__name__ for rule in RULES) + ("language", "quality")


class Cleaner:
    """`judge(row) -> (reason or None, row with normalized text)`; counts every verdict."""

    def __init__(self, cfg: Any, quality: QualityModel | None = None):
        self.cfg = cfg
        self.checks: list[tuple[str, Callable[[Doc], bool]]] = [
            (rule.__name__, lambda doc, rule=rule: rule(doc, cfg)) for rule in RULES if rule.__name__ not in cfg.disabled_rules
        ]
        if cfg.langid_threshold > 0 and "language" not in cfg.disabled_rules:
            self.langid = LanguageIdentifier(cfg.langid_model or None)
            self.checks.append(("language", self._wrong_language))
        if quality is not None:
            self.quality = quality
            self.checks.append(("quality", self._low_quality))
        self.counts: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()

    def judge(self, row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        text = normalize(row["text"])
        row = {**row, "text": text}
        if not text:
            reason: str | None = "empty"
        else:
            doc = Doc(text, row)
            reason = next((name for name, check in self.checks if check(doc)), None)
        self.counts[reason or "kept"] += 1
        return reason, row

    def _wrong_language(self, doc: Doc) -> bool:
        # Judge the language of the words, not of the arithmetic or code identifiers
        # between them (docs about code name functions that read as no language).
        language, probability = self.langid.predict(" ".join(doc.plain_words))
        self.languages[language] += 1
        return language not in self.cfg.languages or probability < self.cfg.langid_threshold

    def _low_quality(self, doc: Doc) -> bool:
        return self.quality.score(doc.text) < self.cfg.quality_threshold
