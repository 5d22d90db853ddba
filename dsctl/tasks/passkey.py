"""Passkey documents (Mohtashami & Jaggi 2023): one fact hidden in a long haystack.

A document is repetitive filler with one needle sentence at a chosen depth,

    …filler… The pass key is 71432. Remember it. 71432 is the pass key. …filler…
    What is the pass key? The pass key is 71432

and a model must produce the key after the final "The pass key is". Documents are built
in token space (filler units are concatenated as token ids) so a document is exactly as
long as asked, whatever the tokenizer. The default world writes passkey prose, extend
trains on these documents, and dsctl.eval.passkey measures retrieval on them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class PasskeyDocument:
    prompt_ids: list[int]
    """Filler, needle, filler, question: everything before the key's answer."""
    answer_ids: list[int]
    """The key as the model should continue the prompt (" 71432")."""
    key: str
    """The digits to retrieve."""
    needle_start: int
    """Token offset of the needle sentence inside prompt_ids."""
    needle_end: int
    """Token offset just past the needle sentence."""
    question_start: int
    """Token offset of the question (the rest of prompt_ids)."""


def make_passkey_document(tokenizer: TextTokenizer, length: int, depth: float, key: str) -> PasskeyDocument:
    """A document of `length` tokens (prompt + answer) with the needle at `depth` ∈ [0, 1]
    of the filler (0 = right at the start, 1 = just before the question)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey depth must be in [0, 1], got {depth}")
    filler = tokenizer.encode(FILLER)
    needle = tokenizer.encode(NEEDLE.format(key=key))
    question = tokenizer.encode(QUESTION)
    answer = tokenizer.encode(" " + key)
    n_filler = length - len(needle) - len(question) - len(answer)
    if n_filler < 0:
        raise ValueError(f"a passkey document needs at least {length - n_filler} tokens; {length} were asked")
    haystack = (filler * (n_filler // max(len(filler), 1) + 1))[:n_filler]
    cut = round(depth * n_filler)
    prompt = haystack[:cut] + needle + haystack[cut:] + question
    return PasskeyDocument(prompt, answer, key, cut, cut + len(needle), len(prompt) - len(question))


def passkey_text(sentences: list[str], key: str, depth: float) -> str:
    """A pretraining document in the passkey format with a natural-text haystack.

    The needle goes between sentences at `depth` ∈ [0, 1]; the document ends with the
    question and its answer, so a model pretrained on these learns to look back for the
    key. Evaluation documents use the repetitive FILLER instead, so what is measured is
    retrieval, not memory of the training haystacks.
    """
    cut = round(depth * len(sentences))
    body = [*sentences[:cut], NEEDLE.format(key=key).strip(), *sentences[cut:]]
    return " ".join(body) + f" {QUESTION} {key}."


def minimum_length(tokenizer: TextTokenizer) -> int:
    """Tokens of a passkey document with no filler (for a key of repeated digits)."""
    key = "5" * KEY_DIGITS
    return sum(len(tokenizer.encode(t)) for t in (NEEDLE.format(key=key), QUESTION, " " + key))


def random_key(rng: random.Random) -> str:
    """A KEY_DIGITS-digit key without a leading zero."""
    return str(rng.randrange(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS))


def spread_depths(n: int) -> list[float]:
    """n needle depths evenly covering the haystack: the middle of n equal bins."""
    return [(i + 0.5) / n for i in range(n)]


def passkey_documents(tokenizer: TextTokenizer, length: int, n: int, seed: int) -> list[PasskeyDocument]:
    """n trial documents of `length` tokens, needles spread over the context, seeded keys."""
    rng = random.Random(f"passkey:{length}:{seed}")
    return [make_passkey_document(tokenizer, length, depth, random_key(rng)) for depth in spread_depths(n)]
