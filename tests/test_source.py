"""The source stage: the offline default world, user files, local datasets."""

import json
import re
import time

import pytest

from dsctl.data.corpus import corpus_files
from dsctl.data.minhash import jaccard, shingle_set
from dsctl.errors import UserError
from dsctl.pipeline.testing import run_stage
from dsctl.tasks import FAMILIES, split_problems
from stages import source

SMALL_WORLD = {"task_problems_per_family": 60, "max_prose_docs": 300, "exact_dups": 20, "near_dups": 20,
               "boilerplate": 10, "junk": 10, "short": 10, "non_english": 10, "passkey_docs": 40, "ledger_docs": 40}


def read_rows(artifact, sub="data"):
    return [json.loads(line) for path in corpus_files(artifact.path, sub) for line in open(path, encoding="utf-8")]


def read_planted(artifact):
    return [json.loads(line) for line in open(artifact.path / "planted.jsonl")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("world")
    started = time.perf_counter()
    artifact = run_stage(source.STAGE, SMALL_WORLD, {}, workdir)
    return artifact, time.perf_counter() - started


def test_default_world_is_deterministic_and_fast(world, tmp_path):
    first, seconds = world
    again = run_stage(source.STAGE, SMALL_WORLD, {}, tmp_path)
    assert read_rows(again) == read_rows(first)
    assert read_planted(again) == read_planted(first)
    other_seed = run_stage(source.STAGE, SMALL_WORLD, {}, tmp_path, seed=1)
    assert read_rows(other_seed) != read_rows(first)
    assert seconds < 30, f"world generation took {seconds:.1f}s"


def test_default_world_mixes_tasks_prose_and_every_kind_of_dirt(world):
    artifact, _ = world
    rows = read_rows(artifact)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    sources = {r["source"].split("/")[0] for r in rows}
    assert {"tasks", "docstrings", "web", "synthetic"} <= sources
    # worksheets: every requested problem is worked in some task document
    assert sum(r["text"].count("</answer>") for r in rows if r["source"].startswith("tasks/")) >= 60 * len(FAMILIES)
    kinds = {p["kind"] for p in read_planted(artifact)}
    assert kinds == {"exact_dup", "near_dup", "junk", "boilerplate", "short", "non_english"}
    assert artifact.metrics["world_prose_documents"] == 300


def test_planted_records_describe_the_rows_truthfully(world):
    artifact, _ = world
    text = {r["id"]: r["text"] for r in read_rows(artifact)}
    for record in read_planted(artifact):
        assert record["id"] in text
        if record["kind"] == "exact_dup":
            assert text[record["id"]] == text[record["of"]] and record["id"] != record["of"]
        if record["kind"] == "near_dup":
            true = jaccard(shingle_set(text[record["id"]]), shingle_set(text[record["of"]]))
            assert 0.7 <= record["jaccard"] <= 0.95
            assert true == pytest.approx(record["jaccard"], abs=1e-4)
        if record["kind"] == "short":
            assert len(text[record["id"]].split()) < 10


def test_world_holds_only_worked_split_problems(world):
    artifact, _ = world
    corpus = "\n".join(r["text"] for r in read_rows(artifact) if r["source"].startswith("tasks/"))
    for family in FAMILIES:
        for split in ("test", "dev", "answer_only"):
            for p in split_problems(family, split, 100, seed=0):
                assert p.prompt not in corpus, (split, p.prompt)
        assert split_problems(family, "worked", 1, seed=0)[0].prompt in corpus


def test_user_files_are_read_and_bad_lines_counted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_bytes(
        b'{"id": 7, "body": "first doc", "lang": "en"}\n'
        b'{"body": "no id here"}\n'
        b"{not json\n"
        b'{"body": "bad \xff\xfe bytes"}\n'
        b'{"other": "no text field"}\n'
    )
    (data / "empty.jsonl").write_bytes(b"")
    pq.write_table(pa.table({"body": ["from parquet"], "score": [0.5]}), data / "b.parquet")
    (data / "c.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")  # damaged: counted, named, not fatal
    artifact = run_stage(source.STAGE, {"world": "none", "paths": [str(data / "*")], "text_field": "body"}, {},
                         tmp_path / "w")
    rows = read_rows(artifact)
    assert [r["text"] for r in rows] == ["first doc", "no id here", "from parquet"]
    assert rows[0]["id"] == "7" and rows[0]["lang"] == "en"
    assert rows[1]["id"] == "a.jsonl:1" and rows[2]["score"] == 0.5
    m = artifact.metrics
    assert (m["read_malformed_json"], m["read_non_utf8"], m["read_missing_text"], m["read_empty_files"]) == (1, 1, 1, 1)
    assert m["read_damaged_files"] == 1 and m["read_damaged_file_names"] == [str(data / "c.jsonl.gz")]
    assert not (artifact.path / "planted.jsonl").exists()


def test_a_path_that_matches_nothing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no files match"):
        run_stage(source.STAGE, {"world": "none", "paths": [str(tmp_path / "nope*.jsonl")]}, {}, tmp_path / "w")


def test_nothing_to_read_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing to read"):
        run_stage(source.STAGE, {"world": "none"}, {}, tmp_path / "w")


def test_negative_world_sizes_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="ledger_docs, junk must be >= 0"):
        run_stage(source.STAGE, {"ledger_docs": -1, "junk": -5}, {}, tmp_path / "w")


def test_task_difficulty_reaches_the_world_and_is_validated(tmp_path):
    config = {**SMALL_WORLD, "families": ["arithmetic"],
              "difficulty": {"arithmetic": {"min_digits": 5, "max_digits": 5, "ops": "+"}}}
    artifact = run_stage(source.STAGE, config, {}, tmp_path / "w")
    tasks = [r["text"] for r in read_rows(artifact) if r["source"] == "tasks/arithmetic"]
    assert tasks and all(len(t.split("What is ")[1].split(" + ")[0]) == 5 for t in tasks)
    with pytest.raises(UserError, match="unknown knob"):
        run_stage(source.STAGE, {"difficulty": {"arithmetic": {"digits": 4}}}, {}, tmp_path / "w")


def test_edited_input_file_changes_the_cache_key(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "version one"}\n')
    config = {"world": "none", "paths": [str(path)]}
    first = run_stage(source.STAGE, config, {}, tmp_path / "w")
    assert run_stage(source.STAGE, config, {}, tmp_path / "w").key == first.key
    path.write_text('{"text": "version two"}\n')
    second = run_stage(source.STAGE, config, {}, tmp_path / "w")
    assert second.key != first.key
    assert read_rows(second)[0]["text"] == "version two"


def test_local_datasets_load_from_disk_and_from_data_files(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"content": ["alpha doc", "beta doc"], "id": ["x", "y"]}).save_to_disk(str(saved))
    artifact = run_stage(source.STAGE, {"world": "none", "dataset": str(saved), "text_field": "content"}, {},
                         tmp_path / "w")
    assert [(r["id"], r["text"]) for r in read_rows(artifact)] == [("x", "alpha doc"), ("y", "beta doc")]

    folder = tmp_path / "jsonfolder"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "gamma"}\n{"text": "delta"}\n')
    artifact = run_stage(source.STAGE, {"world": "none", "dataset": str(folder)}, {}, tmp_path / "w")
    assert [r["text"] for r in read_rows(artifact)] == ["gamma", "delta"]

    with pytest.raises(UserError, match="no column 'body'"):
        run_stage(source.STAGE, {"world": "none", "dataset": str(saved), "text_field": "body"}, {}, tmp_path / "w")


def test_prose_harvest_ignores_stdlib_patches_in_this_process(monkeypatch):
    import inspect

    from dsctl.data.world_prose import docstring_documents

    # Libraries such as torch replace stdlib functions when imported; the harvest runs
    # in a fresh interpreter, so the world cannot depend on what this process imported.
    monkeypatch.setattr(inspect, "getfile", lambda obj: "patched")
    texts = "\n".join(text for _, text in docstring_documents())
    assert "Work out which source or compiled file an object was defined in." in texts


def test_retrieval_documents_answer_from_their_own_text(world):
    """A passkey document asks for the key its needle states; a ledger document answers
    every question with the fact stated earlier; both survive clean's rules."""
    from dsctl.data.clean import Cleaner
    from stages.clean import CleanConfig

    rows = read_rows(world[0])
    passkeys = [r["text"] for r in rows if r["source"] == "synthetic/passkey"]
    ledgers = [r["text"] for r in rows if r["source"] == "synthetic/ledger"]
    assert len(set(passkeys)) == 40 and len(set(ledgers)) == 40  # (planted exact copies aside)
    for text in passkeys:
        key = re.search(r"The pass key is (\d+)\. Remember it\. \1 is the pass key\.", text).group(1)
        assert text.endswith(f"What is the pass key? The pass key is {key}.")
    for text in ledgers:
        facts, answers = text.split(" Now to the questions and their answers. ")
        stated = dict(re.findall(r"([A-Z][a-z]+) [a-z ]+ (\d+)(?: [a-z ]+)?\.", facts.split(". ", 1)[1]))
        answered = re.findall(r"([A-Z][a-z]+)[a-z ]*\? (?:At number )?(\d+)", answers)
        assert len(stated) >= 3 and sorted(answered) == sorted(stated.items())
    cleaner = Cleaner(CleanConfig())
    kept = [cleaner.judge({"id": "x", "text": t})[0] is None for t in passkeys + ledgers]
    assert sum(kept) >= 0.7 * len(kept)
