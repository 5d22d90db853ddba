"""Passkey retrieval (Mohtashami & Jaggi 2023): can the model find one fact in a long haystack?

A document is repetitive filler with one needle sentence at a chosen depth,

    …filler… The pass key is 71432. Remember it. 71432 is the pass key. …filler…
    What is the pass key? The pass key is 71432

and the model must produce the key after the final "The pass key is" (the documents:
dsctl.tasks.passkey). extend and eval both measure retrieval with `passkey_accuracy`.
"""

from __future__ import annotations

import re
from typing import Any

from dsctl.tasks.passkey import TextTokenizer, passkey_documents, spread_depths

_DIGITS = re.compile(r"\d+")


def retrieved_key(text: str) -> str | None:
    """The first run of digits the model produced, or None."""
    found = _DIGITS.search(text)
    return found.group(0) if found else None


def passkey_accuracy(model: Any, tokenizer: TextTokenizer, length: int, trials: int, seed: int = 0,
                     batch_size: int = 8) -> dict[str, Any]:
    """Greedy retrieval accuracy over `trials` documents of `length` tokens.

    Returns {"accuracy", "length", "trials", "by_depth": [(depth, correct), ...]}.
    """
    from dsctl.model import generate

    docs = passkey_documents(tokenizer, length, trials, seed)
    correct: list[bool] = []
    for lo in range(0, len(docs), batch_size):
        chunk = docs[lo:lo + batch_size]
        max_new = max(len(d.answer_ids) for d in chunk) + 1
        result = generate(model, [d.prompt_ids for d in chunk], max_new_tokens=max_new, temperature=0.0)
        correct.extend(retrieved_key(tokenizer.decode(ids)) == d.key for ids, d in zip(result.tokens, chunk))
    depths = spread_depths(trials)
    return {"accuracy": sum(correct) / len(correct), "length": length, "trials": trials,
            "by_depth": [[round(d, 3), int(c)] for d, c in zip(depths, correct)]}
