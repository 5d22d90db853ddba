"""Tokenize stage and token shards: Arrow layout, index, validation split, determinism, reuse."""

from __future__ import annotations

import hashlib
import json
import random

import pyarrow as pa
import pytest

from dsctl.data.shards import TokenShardWriter, encode_to_shards, is_validation, read_index
from dsctl.pipeline.testing import run_stage
from dsctl.tokenizer import Tokenizer
from stages import tokenize

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("corpus")
    (root / "data").mkdir()
    rows = []
    for i in range(400):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        rows.append({"id": f"doc-{i}", "text": f"Document {i}: {body}.\n\tindented {i * 37}\n日本 😀", "source": "t"})
    rows.append({"id": "empty", "text": ""})
    for part in range(2):
        with open(root / "data" / f"part-{part:05d}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[part::2])
    (root / "planted.jsonl").write_text("")
    return root, rows


CONFIG = {"vocab_size": 400, "validation_fraction": 0.1, "workers": 1, "docs_per_batch": 32}


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    root, _ = corpus
    return run_stage(tokenize.STAGE, CONFIG, {"corpus": [root]}, tmp_path_factory.mktemp("work"))


def test_shards_open_with_datasets_and_match_the_index(shards):
    from datasets import Dataset

    index = read_index(shards.path)
    assert index["tokenizer"] == "tokenizer"
    assert index["vocab_size"] == Tokenizer.load(shards.path / "tokenizer").vocab_size
    for split, files in index["splits"].items():
        tokens = 0
        for entry in files:
            path = shards.path / entry["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            ds = Dataset.from_file(str(path))
            assert ds.column_names == ["id", "input_ids"] and len(ds) == entry["documents"]
            assert sum(len(x) for x in ds["input_ids"]) == entry["tokens"]
            tokens += entry["tokens"]
        assert index["total_tokens"][split] == tokens
    schema = pa.ipc.open_stream(str(shards.path / index["splits"]["train"][0]["file"])).schema
    assert schema.field("input_ids").type == pa.list_(pa.int32()) and schema.field("id").type == pa.string()


def test_every_document_is_one_row_that_decodes_to_its_text(shards, corpus):
    _, rows = corpus
    tok = Tokenizer.load(shards.path / "tokenizer")
    text_of = {r["id"]: r["text"] for r in rows}
    seen = {}
    for split in ("train", "validation"):
        for doc_id, ids in shard_rows(shards.path, split):
            assert tok.decode(ids) == text_of[doc_id]
            assert tok.bos_id not in ids and tok.eos_id not in ids
            seen[doc_id] = split
    assert set(seen) == set(text_of) - {"empty"}  # empty documents are skipped and counted
    assert shards.metrics["skipped_empty"] == 1
    assert all((split == "validation") == is_validation(d, 0.1) for d, split in seen.items())
    assert 10 <= shards.metrics["validation_documents"] <= 80


def test_validation_assignment_depends_on_id_not_position():
    ids = [f"doc-{i}" for i in range(2000)]
    held = {d for d in ids if is_validation(d, 0.05)}
    assert held == {d for d in reversed(ids) if is_validation(d, 0.05)}
    assert 50 <= len(held) <= 150
    assert not any(is_validation(d, 0.0) for d in ids)


def test_output_is_identical_for_any_worker_count(corpus, shards, tmp_path):
    root, _ = corpus
    two = run_stage(tokenize.STAGE, {**CONFIG, "workers": 2}, {"corpus": [root]}, tmp_path / "w2")
    train_files = [e["file"] for e in read_index(shards.path)["splits"]["train"]]
    for name in ["index.json", "tokenizer/tokenizer.model"] + train_files:
        assert (two.path / name).read_bytes() == (shards.path / name).read_bytes(), name


def test_reuses_the_tokenizer_of_an_input_artifact(corpus, shards, tmp_path):
    root, _ = corpus
    again = run_stage(tokenize.STAGE, {**CONFIG, "vocab_size": 1000}, {"corpus": [root], "tokenizer": [shards]},
                      tmp_path / "w")
    assert again.metrics["tokenizer_reused"] is True
    model = "tokenizer/tokenizer.model"
    assert (again.path / model).read_bytes() == (shards.path / model).read_bytes()
    assert again.metrics["train_tokens"] == shards.metrics["train_tokens"]


def test_shard_writer_starts_a_new_file_after_the_token_budget(tmp_path):
    writer = TokenShardWriter(tmp_path, "train", tokens_per_shard=10)
    for i in range(7):
        writer.write(f"d{i}", list(range(4)))
    files = writer.close()
    assert [f["documents"] for f in files] == [3, 3, 1]
    assert [f["tokens"] for f in files] == [12, 12, 4]
    empty = TokenShardWriter(tmp_path, "validation").close()
    assert empty[0]["documents"] == 0 and (tmp_path / "validation-00000.arrow").exists()
    assert TokenShardWriter(tmp_path, "train", prefix="s00004-").close(keep_empty=False) == []


def test_encode_to_shards_batches_match_single_document_encoding(shards, corpus, tmp_path):
    _, rows = corpus
    tok = Tokenizer.load(shards.path / "tokenizer")
    writers = {s: TokenShardWriter(tmp_path, s) for s in ("train", "validation")}
    stats = encode_to_shards(iter(rows[:50]), tok.directory / "tokenizer.model", writers, 0.0, batch_size=7)
    writers["train"].close()
    writers["validation"].close()
    got = dict(iter_shard_rows_from(tmp_path / "train-00000.arrow"))
    assert stats.documents == {"train": 50, "validation": 0}
    assert all(got[r["id"]] == tok.encode(r["text"]) for r in rows[:50])


def iter_shard_rows_from(path):
    with pa.ipc.open_stream(str(path)) as reader:
        for batch in reader:
            yield from zip(batch.column("id").to_pylist(), batch.column("input_ids").to_pylist())


def shard_rows(directory, split: str = "train"):
    """(id, input_ids) of every document of a split of a shards artifact, in order."""
    for entry in read_index(directory)["splits"].get(split, []):
        yield from iter_shard_rows_from(directory / entry["file"])


def test_killed_encode_resumes_from_its_finished_shards_with_identical_output(corpus, tmp_path, monkeypatch):
    import dsctl.data.shards as shards_module
    from dsctl.errors import StageFailed

    root, _ = corpus
    clean = run_stage(tokenize.STAGE, CONFIG, {"corpus": [root]}, tmp_path / "clean")

    real, calls = shards_module._encode_batch, {"n": 0}

    def dies_in_the_second_shard(job):
        calls["n"] += 1
        if calls["n"] == 10:  # 7 batches of 32 per shard: the first shard is done
            raise KeyboardInterrupt("simulated kill")
        return real(job)

    monkeypatch.setattr(shards_module, "_encode_batch", dies_in_the_second_shard)
    with pytest.raises((StageFailed, KeyboardInterrupt)):
        run_stage(tokenize.STAGE, CONFIG, {"corpus": [root]}, tmp_path / "work")
    calls["n"] = 0
    monkeypatch.setattr(shards_module, "_encode_batch",
                        lambda job: (calls.__setitem__("n", calls["n"] + 1), real(job))[1])
    resumed = run_stage(tokenize.STAGE, CONFIG, {"corpus": [root]}, tmp_path / "work")
    assert calls["n"] == 7, "the resumed attempt encodes only the unfinished shard"
    assert len(read_index(clean.path)["splits"]["train"]) == 2  # one file per input shard
    for path in sorted(clean.path.rglob("*")):
        if path.is_file() and path.name not in ("manifest.json", "metrics.jsonl"):
            rel = path.relative_to(clean.path)
            assert (resumed.path / rel).read_bytes() == path.read_bytes(), rel
