"""Deterministic batches: batch number n is a pure function of (data, seed, n).

That is what makes resume exact: after a restart at step s the loop asks for batch s and
gets the very tokens an uninterrupted run would have seen, with no iterator state to save.

`PackedTokens` packs pretraining documents (each followed by eos) into fixed windows, in a
fresh seeded document order every epoch. `PackedExamples` packs SFT-style examples
(token ids + a mask of the tokens to learn) into rows without splitting an example.
Both return `doc_ids` so attention can stay inside each document.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from dsctl.errors import UserError

IGNORE_INDEX = -100


def load_token_split(shards_dir: Path, split: str) -> list[np.ndarray]:
    """Every document of `split` ("train"/"validation") of a token-shards artifact."""
    index_path = shards_dir / "index.json"
    if not index_path.is_file():
        raise UserError(f"{shards_dir} is not a token-shards artifact (no index.json)")
    index = json.loads(index_path.read_text())
    docs: list[np.ndarray] = []
    for shard in index["splits"].get(split, []):
        with pa.OSFile(str(shards_dir / shard["file"]), "rb") as fh:
            table = pa.ipc.open_stream(fh).read_all()
        column = table.column("input_ids").combine_chunks()
        flat = column.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        offsets = column.offsets.to_numpy()
        docs.extend(flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    return [d for d in docs if len(d)]


class PackedTokens:
    """Pretraining windows of `seq_len` tokens cut from a shuffled stream of documents."""

    def __init__(self, docs: list[np.ndarray], seq_len: int, batch_size: int, eos_id: int,
                 seed: int, shuffle: bool = True, grad_accum: int = 1):
        if not docs:
            raise UserError("no documents to train on: the token split is empty")
        self.docs, self.seq_len, self.batch_size = docs, seq_len, batch_size
        self.eos_id, self.seed, self.shuffle, self.grad_accum = eos_id, seed, shuffle, grad_accum
        total = sum(len(d) + 1 for d in docs)
        self.windows_per_epoch = total // seq_len
        if self.windows_per_epoch < 1:
            raise UserError(f"the data has {total} tokens, fewer than one sequence of seq_len={seq_len}")
        self._epoch: int | None = None
        self._tokens = self._doc_index = None

    @property
    def tokens_per_epoch(self) -> int:
        return self.windows_per_epoch * self.seq_len

    def _load_epoch(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))
                 if self.shuffle else np.arange(len(self.docs)))
        pieces, ids = [], []
        eos = np.array([self.eos_id], dtype=np.int32)
        for rank, i in enumerate(order):
            pieces.extend((self.docs[i], eos))
            ids.append(np.full(len(self.docs[i]) + 1, rank, dtype=np.int64))
        self._tokens = np.concatenate(pieces)
        self._doc_index = np.concatenate(ids)
        self._epoch = epoch

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, within = divmod(index, self.windows_per_epoch)
        self._load_epoch(epoch)
        lo = within * self.seq_len
        return self._tokens[lo:lo + self.seq_len], self._doc_index[lo:lo + self.seq_len]

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        first = (step * self.grad_accum + micro) * self.batch_size
        rows = [self.window(first + b) for b in range(self.batch_size)]
        tokens = torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64))
        doc_ids = torch.from_numpy(np.stack([r[1] - r[1][0] for r in rows]))
        return {"input_ids": tokens, "labels": tokens, "doc_ids": doc_ids}


class PackedExamples:
    """SFT rows: whole examples packed first-fit in a seeded order; labels −100 where the
    example's mask is 0 (prompts, system text) and on padding."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], seq_len: int, batch_size: int,
                 pad_id: int, seed: int, shuffle: bool = True, grad_accum: int = 1):
        if not examples:
            raise UserError("no training examples")
        self.examples = [(np.asarray(ids[:seq_len], np.int64), np.asarray(mask[:seq_len], bool))
                         for ids, mask in examples]
        self.truncated = sum(len(ids) > seq_len for ids, _ in examples)
        self.seq_len, self.batch_size, self.pad_id = seq_len, batch_size, pad_id
        self.seed, self.shuffle, self.grad_accum = seed, shuffle, grad_accum
        self._rows_per_epoch: list[int] = []
        self._cached_epoch: int | None = None
        self._cached_rows: list[list[int]] = []

    def _pack(self, epoch: int) -> list[list[int]]:
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
                 if self.shuffle else np.arange(len(self.examples)))
        rows: list[list[int]] = []
        used = self.seq_len  # forces a new row for the first example
        for i in order:
            n = len(self.examples[i][0])
            if used + n > self.seq_len:
                rows.append([])
                used = 0
            rows[-1].append(int(i))
            used += n
        return rows

    def _rows(self, epoch: int) -> list[list[int]]:
        if self._cached_epoch != epoch:
            self._cached_rows, self._cached_epoch = self._pack(epoch), epoch
        return self._cached_rows

    def _locate(self, index: int) -> tuple[int, int]:
        """Global row index -> (epoch, row within that epoch's packing)."""
        epoch, start = 0, 0
        while True:
            if epoch == len(self._rows_per_epoch):
                self._rows_per_epoch.append(len(self._rows(epoch)))
            if index < start + self._rows_per_epoch[epoch]:
                return epoch, index - start
            start += self._rows_per_epoch[epoch]
            epoch += 1

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        epoch, within = self._locate(index)
        members = self._rows(epoch)[within]
        ids = np.full(self.seq_len, self.pad_id, np.int64)
        labels = np.full(self.seq_len, IGNORE_INDEX, np.int64)
        docs = np.full(self.seq_len, len(members), np.int64)
        pos = 0
        for d, i in enumerate(members):
            tokens, mask = self.examples[i]
            ids[pos:pos + len(tokens)] = tokens
            labels[pos:pos + len(tokens)] = np.where(mask, tokens, IGNORE_INDEX)
            docs[pos:pos + len(tokens)] = d
            pos += len(tokens)
        return ids, labels, docs

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        first = (step * self.grad_accum + micro) * self.batch_size
        rows = [self.row(first + b) for b in range(self.batch_size)]
        return {key: torch.from_numpy(np.stack([r[j] for r in rows]))
                for j, key in enumerate(("input_ids", "labels", "doc_ids"))}
