"""Retrieval documents for the default world: facts stated once, asked for later.

A model can only use a long context if it can look back and copy what it finds there;
in transformers that is the job of induction heads, which form only when the training
text rewards copying often enough. Prose and worked solutions reward it rarely, so
these documents give the world that signal. They are necessary, not sufficient: the
2.5M-parameter CPU recipe still retrieves 0 of 32 passkeys after 240 steps with them,
because induction needs far more steps than that (benchmarks/bench_induction.py); a
GPU-sized run is where they pay off.

Two kinds, both reading as plain English so clean keeps them and both varied enough
that dedup does too:

* passkey documents (`dsctl.eval.passkey.passkey_text`): one key hidden in prose
  sentences, asked for at the end — the format the extend stage trains and measures;
* ledger documents: several people and amounts, then questions about them in a new
  order, each answered by copying the amount — many retrievals per document.
"""

from __future__ import annotations

import random
import re

from dsctl.tasks.passkey import passkey_text, random_key

NAMES = (
    "Ada", "Bram", "Cleo", "Dario", "Edda", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lars",
    "Mara", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tessa", "Ugo", "Vera", "Wim", "Xena",
    "Yusuf", "Zora", "Anil", "Bea", "Cyril", "Dana", "Emil", "Fleur", "Gus", "Hana", "Ivo", "Jade",
)
# (statement, question, answer): {n} is the name, {v} the amount. Each fact of a document
# picks its own form and answers restate only the amount, so no phrase repeats often
# enough for clean's repetition rules (top n-gram share, duplicated 5-grams).
LEDGER_FORMS = (
    ("{n} paid {v} coins.", "How much did {n} pay?", "{v} coins."),
    ("{n} owes {v} dollars.", "How much does {n} owe?", "{v} dollars."),
    ("{n} has {v} marbles.", "How many marbles does {n} have?", "{v} marbles."),
    ("{n} lives at number {v}.", "Where does {n} live?", "At number {v}."),
    ("{n} scored {v} points.", "What did {n} score?", "{v} points."),
    ("{n} walked {v} miles.", "How far did {n} walk?", "{v} miles."),
    ("{n} is {v} days old.", "How old is {n}?", "{v} days."),
    ("{n} sold {v} apples.", "How many apples did {n} sell?", "{v} apples."),
)
LEDGER_OPENINGS = ("Here is the ledger of the day, to be read with care.", "Notes from the meeting that we had.",
                   "The records show the following, and they are to be trusted.",
                   "Read these facts carefully and then answer the questions.",
                   "A short list of what the clerk wrote down.")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def prose_sentences(texts: list[str]) -> list[str]:
    """Whole English sentences of 4-30 words from `texts`, whitespace normalized."""
    sentences = [" ".join(s.split()) for text in texts for s in _SENTENCE_END.split(text)]
    return [s for s in sentences if s.endswith(".") and 4 <= len(s.split()) <= 30]


def passkey_document(rng: random.Random, sentences: list[str], max_words: int) -> str:
    """A passkey document whose haystack is 10..max_words words of `sentences`, drawn
    across many source documents so no two passkey documents share a long run of text."""
    budget, haystack = rng.randint(10, max(10, max_words)), []
    while budget > 0:
        haystack.append(rng.choice(sentences))
        budget -= len(haystack[-1].split())
    return passkey_text(haystack, random_key(rng), rng.random())


def ledger_document(rng: random.Random, min_facts: int = 3, max_facts: int = 8) -> str:
    """Facts such as "Mara paid 417 coins." then each asked for in a new order and
    answered from the text, e.g. "How much did Mara pay? 417 coins."."""
    names = rng.sample(NAMES, rng.randint(min_facts, max_facts))
    facts = {name: (rng.choice(LEDGER_FORMS), str(rng.randint(2, 999))) for name in names}
    stated = [statement.format(n=name, v=value) for name, ((statement, _, _), value) in facts.items()]
    asked = []
    for name in rng.sample(names, len(names)):
        (_, question, answer), value = facts[name]
        asked.append(f"{question.format(n=name)} {answer.format(v=value)}")
    return " ".join([rng.choice(LEDGER_OPENINGS), *stated, "Now to the questions and their answers.", *asked])
