"""Eval-set decontamination: drop training documents that share an n-gram with eval text.

Text is compared as a sequence of *tokens*: the casefolded text split into `\\w+` words
and single punctuation marks (`What is 306 + 12?` -> what is 306 + 12 ?), so spacing
and case never hide a match while the operators of a math problem still count.

A training document is contaminated when it contains any n-token window (default 13)
of any eval text. An eval text shorter than n tokens (most task prompts are) is matched
whole instead: the document must contain its entire token sequence. The matching eval
id (the first match in the document) is reported with every removal.

Matching is vectorized: token hashes come from `dsctl.data.minhash` (one byte array per
batch), every window's hash is a difference of one prefix sum, and membership is a
`searchsorted` into the sorted eval hashes of the same window length.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from dsctl.data.corpus import PartFile, ReadStats, iter_rows, part_name
from dsctl.data.minhash import WHITESPACE_BYTES, ByteBatch, segment_hashes, within_segments
from dsctl.data.shards import batched

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def eval_tokens(text: str) -> list[str]:
    """The tokens decontamination compares: casefolded words and punctuation marks."""
    return _TOKEN_RE.findall(text.casefold())


@dataclass(frozen=True)
class EvalText:
    id: str
    """Reported as `eval_id` on every document it contaminates (e.g. "arithmetic:1a2b…")."""
    text: str
    source: str = ""
    """Where it came from (task family or file name), for per-source counts."""
    whole: bool = False
    """Match only the entire token sequence, never a shorter window (for templated text
    such as generated task problems, whose n-gram windows recur across problems)."""


def _token_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes of all tokens of the batch concatenated, tokens per text)."""
    return ByteBatch.join([" ".join(eval_tokens(t)) for t in texts]).words(WHITESPACE_BYTES)


def _windows(counts: np.ndarray, width: int, include: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start token (global) and text index of every `width`-token window inside one text
    (of the texts in `include`, a mask, when given)."""
    per_text = np.maximum(counts - width + 1, 0)
    if include is not None:
        per_text = np.where(include, per_text, 0)
    starts = np.cumsum(counts) - counts
    first = np.repeat(starts, per_text) + within_segments(per_text)
    return first, np.repeat(np.arange(counts.size), per_text)


@dataclass
class NgramIndex:
    """Sorted hashes of the n-token windows of the eval texts (a text shorter than n
    tokens, or a `whole` text, is keyed by its first min(n, length) tokens and matched in
    full), with the eval text each came from."""

    n: int
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    full_len: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    full_hash: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    ids: list[str] = field(default_factory=list)
    skipped_empty: int = 0
    templates: int = 0
    """Windows left out because more than `max_shared` distinct eval ids share them."""

    @classmethod
    def build(cls, evals: Iterable[EvalText], n: int = 13, max_shared: int = 1) -> "NgramIndex":
        """Index `evals`. A window found in more than `max_shared` distinct eval ids is
        template text (e.g. a fixed instruction every prompt repeats), not evidence of
        one leaked item, and is left out."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        evals = list(evals)
        index = cls(n, ids=[e.id for e in evals])
        tokens, counts = _token_hashes([e.text for e in evals])
        index.skipped_empty = int((counts == 0).sum())
        whole = np.array([e.whole for e in evals], dtype=bool) | (counts < n)
        starts = np.cumsum(counts) - counts
        # Windowed texts: every n-window, matched as is.
        first, owner = _windows(counts, n, include=~whole)
        keys = segment_hashes(tokens, first, first + n)
        _, id_code = np.unique(np.array(index.ids, dtype=object), return_inverse=True)
        keep = _specific(keys, id_code.reshape(-1)[owner], max_shared)
        index.templates = int((~keep).sum())
        keys, owner = keys[keep], owner[keep]
        full_len = np.full(keys.size, n, dtype=np.int64)
        # Whole texts: keyed by their first min(n, length) tokens, verified in full.
        wholes = np.flatnonzero(whole & (counts > 0))
        width = np.minimum(counts[wholes], n)
        ends = starts[wholes] + counts[wholes]
        keys = np.concatenate((keys, segment_hashes(tokens, starts[wholes], starts[wholes] + width)))
        owner = np.concatenate((owner, wholes))
        full_len = np.concatenate((full_len, counts[wholes]))
        unused = np.zeros(int(keep.sum()), dtype=np.uint64)  # windowed entries need no full check
        full_hash = np.concatenate((unused, segment_hashes(tokens, starts[wholes], ends, salt=1)))
        order = np.argsort(keys, kind="stable")
        index.keys, index.owner = keys[order], owner[order]
        index.full_len, index.full_hash = full_len[order], full_hash[order]
        return index

    def __len__(self) -> int:
        return len(self.ids) - self.skipped_empty

    def match(self, texts: list[str]) -> list[str | None]:
        """For each text, the id of an eval text it contains (its earliest match) or None."""
        tokens, counts = _token_hashes(texts)
        doc_end = np.cumsum(counts)
        best = np.full(len(texts), np.iinfo(np.int64).max, dtype=np.int64)  # earliest token
        best_owner = np.full(len(texts), -1, dtype=np.int64)
        for width in np.unique(np.minimum(self.full_len, self.n)).tolist():
            first, doc = _windows(counts, width)
            window = segment_hashes(tokens, first, first + width)
            lo = np.searchsorted(self.keys, window, side="left")
            hi = np.searchsorted(self.keys, window, side="right")
            hit = np.flatnonzero(hi > lo)
            # Expand each hit window into its (window, index entry) candidates.
            per_hit = hi[hit] - lo[hit]
            w = np.repeat(hit, per_hit)
            within = np.arange(per_hit.sum()) - np.repeat(np.cumsum(per_hit) - per_hit, per_hit)  # 0.. per hit
            entry = np.repeat(lo[hit], per_hit) + within
            length = self.full_len[entry]
            ok = np.minimum(length, self.n) == width
            long = ok & (length > self.n)  # keyed by a prefix: verify the whole sequence
            if long.any():
                start = first[w[long]]
                stop = start + length[long]
                inside = stop <= doc_end[doc[w[long]]]
                full = np.zeros(int(long.sum()), dtype=bool)
                full[inside] = (segment_hashes(tokens, start[inside], stop[inside], salt=1)
                                == self.full_hash[entry[long]][inside])
                ok[np.flatnonzero(long)] = full
            w, entry = w[ok], entry[ok]
            order = np.lexsort((self.owner[entry], first[w]))  # earliest position, then eval order
            docs, pick = np.unique(doc[w[order]], return_index=True)
            pos, owner = first[w[order]][pick], self.owner[entry[order]][pick]
            better = pos < best[docs]
            best[docs[better]], best_owner[docs[better]] = pos[better], owner[better]
        return [self.ids[o] if o >= 0 else None for o in best_owner.tolist()]


def _specific(window: np.ndarray, eval_code: np.ndarray, max_shared: int) -> np.ndarray:
    """Mask of windows whose hash occurs in at most `max_shared` distinct eval ids."""
    if window.size == 0:
        return np.zeros(0, dtype=bool)
    pairs = np.unique(np.stack([window, eval_code.astype(np.uint64)], axis=1), axis=0)
    hashes, sharing = np.unique(pairs[:, 0], return_counts=True)
    return ~np.isin(window, hashes[sharing > max_shared])


def task_eval_texts(
    families: Iterable[str], per_family: int, difficulty: dict[str, dict] | None = None
) -> list[EvalText]:
    """Prompt and worked solution of every dev and test problem of each family at
    `difficulty` (family -> overrides): the whole splits where the family can list them,
    else the first `per_family` of each split's yardstick draw, which every stage's dev
    summary and eval's test report take a prefix of (the draw is the same at every seed)."""
    from dsctl.tasks import FAMILIES, split_problems
    from dsctl.tasks.base import YARDSTICK_SEED, whole_split

    texts = []
    for family in families:
        knobs = (difficulty or {}).get(family)
        for split in ("dev", "test"):
            if FAMILIES[family].enumerate is not None:
                problems = whole_split(FAMILIES[family], split, knobs)
            else:
                problems = split_problems(family, split, per_family, YARDSTICK_SEED, knobs)
            for p in problems:
                texts.append(EvalText(f"{family}:{p.id}", p.prompt, family, whole=True))
                texts.append(EvalText(f"{family}:{p.id}", p.solution, family, whole=True))
    return texts


def problem_set_eval_texts(problem_set: Any) -> list[EvalText]:
    """Prompt and worked solution of every dev and test problem of a problem set
    (dsctl.tasks.problem_set.ProblemSet). A set made from the built-in families is
    templated text, matched whole as task_eval_texts does; a user's questions are prose,
    matched by shared windows like any eval file."""
    whole = problem_set.grading.verifier == "family"
    texts = []
    for split in ("dev", "test"):
        for p in problem_set.split(split):
            for text in (p.prompt, p.solution):
                if text:
                    texts.append(EvalText(f"{problem_set.name}:{p.id}", text, problem_set.name, whole=whole))
    return texts


def file_eval_texts(files: Iterable[Path], text_field: str = "text") -> Iterator[EvalText]:
    """Eval texts from JSONL/Parquet files; the id is the row's `id` or `file:row`."""
    for path in files:
        stats = ReadStats()
        for i, row in enumerate(iter_rows([path], stats, text_field)):
            yield EvalText(str(row.get("id", f"{path.name}:{i}")), row[text_field], path.name)


@dataclass(frozen=True)
class DecontaminateJob:
    """One input shard to match against the eval index."""

    index: int
    """The input shard's number (its parts are `part-NNNNN.jsonl`)."""
    path: Path
    """The shard's row file."""
    out: Path
    """The artifact: data/ and rejected/ go under it."""
    ngrams: NgramIndex
    """The eval texts' index. It travels with every task: eval sets are small."""
    batch_size: int
    """Documents matched at a time."""
    text_field: str = "text"


def decontaminate_shard(job: DecontaminateJob) -> dict:
    """One input shard -> data/ and rejected/ parts under `out` (a rejected row gets
    reason "contaminated" and the `eval_id` it contains); returns how many rows each eval
    id caught and the read counts."""
    stats = ReadStats()
    caught: Counter[str] = Counter()
    with PartFile(job.out / "data" / part_name(job.index)) as kept, \
            PartFile(job.out / "rejected" / part_name(job.index)) as rejected:
        for batch in batched(iter_rows([job.path], stats, job.text_field), job.batch_size):
            for row, eval_id in zip(batch, job.ngrams.match([row[job.text_field] for row in batch])):
                if eval_id is None:
                    kept.write(row)
                else:
                    rejected.write({**row, "reason": "contaminated", "eval_id": eval_id})
                    caught[eval_id] += 1
    return {"caught": dict(caught), "read": asdict(stats)}
