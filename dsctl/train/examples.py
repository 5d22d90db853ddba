"""Supervised fine-tuning data: chat conversations from tasks, samples and JSONL files,
tokenized with the chat template into (ids, learn_mask) examples, for sft and distill.

    convs = task_conversations(task_problems(["arithmetic"], "worked", 2000, seed=0))  # worked answers
    convs += read_conversations(Path("mine.jsonl"), stats)                 # {prompt, response} / {messages}
    examples, too_long = encode_conversations(tokenizer, convs, seq_len=256)
    train, val = split_validation(examples, 0.05, seed=0)
    PackedExamples(train, seq_len, batch_size, tokenizer.pad_id, seed)     # labels −100 off-assistant

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str} with at
least one user and one assistant turn; the tokenizer's `encode_chat` marks the tokens to
learn (assistant content + the closing eos), everything else gets label −100.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dsctl.errors import UserError
from dsctl.tasks import Problem, reasoning_target

Conversation = list[dict[str, str]]
ROLES = ("system", "user", "assistant")


@dataclass
class RowStats:
    """What reading conversation rows had to skip, for the stage summary."""

    rows: int = 0
    """Rows turned into conversations."""
    malformed: int = 0
    """Rows that were not JSON objects, or had neither {prompt, response} nor valid {messages}."""
    rejected_samples: int = 0
    """Samples rows marked incorrect (correct = false), which SFT must not learn from."""
    examples: list[str] = field(default_factory=list)
    """The first few malformed rows as 'file:line: reason', to show the user."""

    def add_malformed(self, where: str, reason: str) -> None:
        self.malformed += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    def as_dict(self, prefix: str = "") -> dict[str, int]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items() if k != "examples"}


def task_conversations(problems: Sequence[Problem]) -> list[Conversation]:
    """Each problem answered by its worked solution in the reasoning format
    `<think>…</think><answer>…</answer>` (problems of a worked split: they have one)."""
    return [chat(p.prompt, reasoning_target(p)) for p in problems]


def chat(prompt: str, response: str) -> Conversation:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def row_to_conversation(row: Any) -> Conversation:
    """A JSONL row -> conversation; ValueError saying what is wrong otherwise.

    Accepted shapes: {"messages": [{"role", "content"}, ...]}, {"prompt", "response"},
    and samples rows {"prompt", "completion"}."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"each message needs a role in {ROLES} and a string content")
        roles = [m["role"] for m in messages]
        if "user" not in roles or "assistant" not in roles:
            raise ValueError("'messages' needs at least one user and one assistant turn")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    response = row.get("response", row.get("completion"))
    if not isinstance(row.get("prompt"), str) or not isinstance(response, str):
        raise ValueError("needs string 'prompt' and 'response' (or 'completion'), or 'messages'")
    if not row["prompt"].strip() or not response.strip():
        raise ValueError("empty prompt or response")
    return chat(row["prompt"], response)


def read_conversations(path: Path, stats: RowStats) -> list[Conversation]:
    """Conversations from a JSONL (or Parquet) file; bad rows are counted in `stats`,
    never fatal. Rows with `"correct": false` (rejected samples) are skipped."""
    out: list[Conversation] = []
    for where, row in _rows(path, stats):
        if isinstance(row, dict) and row.get("correct") is False:
            stats.rejected_samples += 1
            continue
        try:
            out.append(row_to_conversation(row))
        except ValueError as exc:
            stats.add_malformed(where, str(exc))
            continue
        stats.rows += 1
    return out


def _rows(path: Path, stats: RowStats):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {i}", row
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                stats.add_malformed(f"{path}:{lineno}", f"not valid UTF-8 JSON ({type(exc).__name__})")


def artifact_conversations(root: Path, stats: RowStats) -> list[Conversation]:
    """Conversations from a samples artifact (samples.jsonl) or a corpus artifact
    (data/*.jsonl|parquet whose rows carry prompt/response or messages)."""
    from dsctl.data.corpus import corpus_files

    files = [root / "samples.jsonl"] if (root / "samples.jsonl").is_file() else corpus_files(root)
    if not files:
        raise UserError(f"{root} has neither samples.jsonl nor JSONL/Parquet rows under data/")
    out: list[Conversation] = []
    for path in files:
        out.extend(read_conversations(path, stats))
    return out


def encode_conversations(tokenizer, conversations: Sequence[Conversation],
                         seq_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(examples [(ids, learn_mask)], dropped): conversations longer than `seq_len`
    tokens are dropped rather than cut, since a cut answer teaches a wrong ending."""
    examples, dropped = [], 0
    for conv in conversations:
        ids, mask = tokenizer.encode_chat(conv, add_generation_prompt=False)
        if len(ids) > seq_len or not any(mask):
            dropped += 1
            continue
        examples.append((list(ids), [int(m) for m in mask]))
    return examples, dropped


def split_validation(examples: list, fraction: float, seed: int, minimum: int = 1) -> tuple[list, list]:
    """(train, validation): a seeded random `fraction` (at least `minimum`) held out."""
    import numpy as np

    if len(examples) < 2:
        return examples, examples
    n_val = min(len(examples) - 1, max(minimum, round(fraction * len(examples))))
    order = np.random.default_rng([seed, 17]).permutation(len(examples))
    held = set(order[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])
