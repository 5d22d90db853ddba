"""The built-in default world: a small, dirty, fully offline pretraining corpus.

It mixes three things, all deterministic from the seed:

* reasoning documents from `dsctl.tasks` (worked split only, so no answer-only, dev or
  test problem is ever seen worked),
* real English prose from the installed Python's docstrings (`world_prose`),
* retrieval documents (`world_retrieval`): passkeys hidden in prose and ledgers of
  facts asked for again, so the model learns to look back and copy (induction),
* planted dirt (`world_dirt`): exact duplicates, near duplicates, boilerplate, symbol
  junk, very short stubs and non-English passages.

Every planted row is also listed in `planted` (the rows of `planted.jsonl`, which the
`audit` stage reads) so clean and dedup can be scored for precision and recall.
Near duplicates record their true Jaccard similarity to the original over word
5-gram shingles of casefolded `\\w+` words, the shingling dedup uses
(`minhash.shingle_set`, `minhash.jaccard`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from dsctl.data import world_dirt, world_retrieval
from dsctl.data.world_prose import docstring_documents
from dsctl.tasks import FAMILIES, problem_document, split_problems


@dataclass(frozen=True)
class WorldSizes:
    """How much of each ingredient the world gets (defaults: ~5-6k documents, ~3 MB)."""

    task_problems_per_family: int = 2400
    task_doc_min_words: int = 40
    task_families: tuple[str, ...] = tuple(sorted(FAMILIES))
    max_prose_docs: int = 3000
    passkey_docs: int = 600
    passkey_max_words: int = 140
    ledger_docs: int = 600
    exact_dups: int = 250
    near_dups: int = 250
    boilerplate: int = 120
    junk: int = 120
    short: int = 120
    non_english: int = 200


@dataclass
class World:
    rows: list[dict[str, Any]]
    """Corpus rows {id, text, source}, shuffled."""
    planted: list[dict[str, Any]]
    """One record per planted dirty row (planted.jsonl)."""
    stats: dict[str, Any] = field(default_factory=dict)


def build_world(seed: int, sizes: WorldSizes = WorldSizes(), difficulty: dict[str, dict] | None = None) -> World:
    rng = random.Random(f"world:{seed}")
    tasks, prose = _task_rows(rng, sizes, seed, difficulty or {}), _prose_rows(rng, sizes)
    retrieval = _retrieval_rows(rng, sizes, prose)
    clean = tasks + prose + retrieval
    dirty, planted = _dirt_rows(rng, sizes, clean)
    stats = {"task_documents": len(tasks), "prose_documents": len(prose), "retrieval_documents": len(retrieval)}
    rows = clean + dirty
    rng.shuffle(rows)
    # Neutral ids after the shuffle, so nothing downstream can read the answer key off
    # an id; planted records are rewritten to the same ids.
    new_id = {row["id"]: f"w{seed}-{i:06d}" for i, row in enumerate(rows)}
    for row in rows:
        row["id"] = new_id[row["id"]]
    for record in planted:
        record["id"] = new_id[record["id"]]
        if "of" in record:
            record["of"] = new_id[record["of"]]
    planted.sort(key=lambda r: r["id"])
    return World(rows, planted, {**stats, **_stats(rows, planted)})


_SHEET_HEADINGS = (
    "Practice problems with the working shown.",
    "Worked examples: each step is written out, and the answer comes at the end.",
    "Exercises with answers. Work through them one step at a time and check the result.",
    "A page of practice problems with the solutions written out in full.",
    "Here are some problems to try, with the worked solution below each of them.",
)


def _task_rows(rng: random.Random, sizes: WorldSizes, seed: int, difficulty: dict[str, dict]) -> list[dict]:
    """Worksheets: a heading, then worked train problems until the document has at least
    `task_doc_min_words` words. A compact arithmetic problem is a dozen words of mostly
    math: alone it is a stub that clean rightly drops (min_words; Gopher's stop-word rule
    needs some prose), while a worded countdown or equation solution is a document by
    itself (and four of them would trip the repetition rules)."""
    rows = []
    for family in sizes.task_families:
        sheet: list = []
        words = 0
        for p in split_problems(family, "worked", sizes.task_problems_per_family, seed, difficulty.get(family)):
            if not sheet:
                heading = rng.choice(_SHEET_HEADINGS)
                sheet, words, first = [heading], len(heading.split()), p
            sheet.append(problem_document(p, rng))
            words += len(sheet[-1].split())
            if words >= sizes.task_doc_min_words:
                rows.append({"id": f"task:{first.id}", "text": "\n\n".join(sheet), "source": f"tasks/{family}"})
                sheet = []
        if sheet:
            rows.append({"id": f"task:{first.id}", "text": "\n\n".join(sheet), "source": f"tasks/{family}"})
    return rows


def _prose_rows(rng: random.Random, sizes: WorldSizes) -> list[dict]:
    documents = docstring_documents()
    if len(documents) > sizes.max_prose_docs:
        keep = sorted(rng.sample(range(len(documents)), sizes.max_prose_docs))
        documents = [documents[i] for i in keep]
    return [{"id": f"prose:{i}", "text": text, "source": f"docstrings/{name}"}
            for i, (name, text) in enumerate(documents)]


def _retrieval_rows(rng: random.Random, sizes: WorldSizes, prose: list[dict]) -> list[dict]:
    sentences = world_retrieval.prose_sentences([row["text"] for row in prose])
    rows = []
    if sentences:
        for i in range(sizes.passkey_docs):
            text = world_retrieval.passkey_document(rng, sentences, sizes.passkey_max_words)
            rows.append({"id": f"passkey:{i}", "text": text, "source": "synthetic/passkey"})
    for i in range(sizes.ledger_docs):
        rows.append({"id": f"ledger:{i}", "text": world_retrieval.ledger_document(rng), "source": "synthetic/ledger"})
    return rows


def _dirt_rows(rng: random.Random, sizes: WorldSizes, clean: list[dict]) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    planted: list[dict] = []

    def plant(kind: str, text: str, source: str = "web", **record: Any) -> None:
        row_id = f"{kind}:{len(rows)}"
        rows.append({"id": row_id, "text": text, "source": source})
        planted.append({"id": row_id, "kind": kind, **record})

    prose = [r for r in clean if r["source"].startswith("docstrings/")]
    for original in rng.sample(clean, min(sizes.exact_dups, len(clean))):
        plant("exact_dup", original["text"], original["source"], of=original["id"])
    long_prose = [r for r in prose if len(r["text"].split()) >= 40]
    made = 0
    for original in rng.sample(long_prose, len(long_prose)):
        if made == sizes.near_dups:
            break
        edited = world_dirt.near_duplicate(rng, original["text"])
        if edited is not None:
            plant("near_dup", edited[0], original["source"], of=original["id"], jaccard=round(edited[1], 4))
            made += 1
    for _ in range(sizes.boilerplate):
        plant("boilerplate", world_dirt.boilerplate(rng))
    for _ in range(sizes.junk):
        plant("junk", world_dirt.junk(rng))
    for _ in range(sizes.short):
        plant("short", world_dirt.short(rng, rng.choice(prose)["text"] if prose else "Click here."))
    for _ in range(sizes.non_english):
        lang, text = world_dirt.non_english(rng)
        plant("non_english", text, f"web/{lang}")
    return rows, planted


def _stats(rows: list[dict], planted: list[dict]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for record in planted:
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    similarities = [r["jaccard"] for r in planted if "jaccard" in r]
    stats: dict[str, Any] = {
        "documents": len(rows),
        "bytes": sum(len(r["text"].encode()) for r in rows),
        **{f"planted_{k}": v for k, v in sorted(kinds.items())},
    }
    if similarities:
        stats["near_dup_jaccard_min"] = min(similarities)
        stats["near_dup_jaccard_mean"] = round(sum(similarities) / len(similarities), 4)
        stats["near_dup_jaccard_max"] = max(similarities)
    return stats

