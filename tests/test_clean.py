"""The clean stage: normalization, per-rule rejects, language ID, the quality classifier,
and how well it removes the default world's planted junk."""

import json
import random

import pytest

from dsctl.data.corpus import corpus_files
from dsctl.data.text_rules import normalize
from dsctl.data.world_dirt import non_english
from dsctl.errors import UserError
from dsctl.pipeline.testing import run_stage
from stages import clean, source

PROSE = (
    "The library keeps a record of every book that has been lent to a reader, and it sends a short "
    "reminder when the book is late. Readers can renew a loan twice before they have to bring the book "
    "back to the desk, and the staff are happy to help with anything that is hard to find."
)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path.parent


def read(artifact, sub):
    return [json.loads(line) for p in corpus_files(artifact.path, sub) for line in open(p, encoding="utf-8")]


def test_normalize_applies_nfc_drops_control_chars_and_repairs_whitespace():
    text = "Cafe\u0301  au\tlait\x07 \u200b\r\n\r\n\r\n\r\nnext   line  \n"
    assert normalize(text) == "Café au lait\n\nnext line"


def test_each_rule_rejects_its_kind_of_document_and_nothing_is_lost(tmp_path):
    rows = {
        "good": PROSE,
        "short": "Click here to continue.",
        "boilerplate": "\n".join(["Skip to main content", "We use cookies to improve your experience on our website.",
                                  "Accept all cookies", "Privacy Policy | Terms of Use", PROSE[:60] + ".",
                                  "© 2024 Example Inc. All rights reserved."]),
        "symbols": " ".join(["### the of and to with that"] * 6),
        "bullets": "\n".join(f"• item number {i} of the list and the rest of the thing to read" for i in range(8)),
        "repeats": "\n".join([PROSE[:120] + "."] * 5),
        "foreign": " ".join(non_english(random.Random(3))[1] for _ in range(3)),
        "math_task": "Question: What is 347 + 26?\n<think>Add the digits from right to left. The ones: 7 + 6 = 13, "
                     "write 3 and carry 1. The tens: 4 + 2 + 1 = 7, write 7. The hundreds: 3 + 0 = 3, write 3. "
                     "So 347 + 26 = 373.</think><answer>373</answer>",
    }
    src = write_jsonl(tmp_path / "in" / "data" / "part-00000.jsonl",
                      [{"id": k, "text": v, "extra": 1} for k, v in rows.items()])
    out = run_stage(clean.STAGE, {}, {"corpus": [src]}, tmp_path / "w")
    kept = {r["id"]: r for r in read(out, "data")}
    reasons = {r["id"]: r["reason"] for r in read(out, "rejected")}
    assert set(kept) == {"good", "math_task"}
    assert kept["good"]["extra"] == 1
    assert reasons == {"short": "min_words", "boilerplate": "boilerplate", "symbols": "symbol_word_ratio",
                       "bullets": "bullet_lines", "repeats": "duplicate_lines", "foreign": "language"}
    m = out.metrics
    assert m["kept"] + m["rejected"] == m["documents"] == len(rows)
    assert m["rejected_min_words"] == 1 and m["rejected_language"] == 1


def test_allowed_languages_keep_other_languages(tmp_path):
    lang, passage = non_english(random.Random(5))
    src = write_jsonl(tmp_path / "in" / "x.jsonl", [{"id": "en", "text": PROSE}, {"id": lang, "text": passage}])
    # English only (the default): the passage goes, by language ID.
    out = run_stage(clean.STAGE, {"min_words": 5}, {"corpus": [src]}, tmp_path / "w")
    assert [(r["id"], r["reason"]) for r in read(out, "rejected")] == [(lang, "language")]
    # Allowed, it is kept: the English stop-word rule does not judge other languages.
    out = run_stage(clean.STAGE, {"languages": ["en", lang], "min_words": 5}, {"corpus": [src]}, tmp_path / "w")
    assert {r["id"] for r in read(out, "data")} == {"en", lang}


def test_bad_input_lines_are_counted_not_fatal(tmp_path):
    folder = tmp_path / "in" / "data"
    folder.mkdir(parents=True)
    (folder / "part-00000.jsonl").write_bytes(
        json.dumps({"id": "a", "text": PROSE}).encode() + b"\n{broken\n" + b'{"id": "b", "text": "\xff\xfe"}\n'
        + b'{"id": "c"}\n' + json.dumps({"id": "d", "text": " \x00\x01 "}).encode() + b"\n"
    )
    (folder / "part-00001.jsonl").write_bytes(b"")
    out = run_stage(clean.STAGE, {}, {"corpus": [folder.parent]}, tmp_path / "w")
    m = out.metrics
    assert (m["read_malformed_json"], m["read_non_utf8"], m["read_missing_text"], m["read_empty_files"]) == (1, 1, 1, 1)
    assert m["kept"] == 1 and m["rejected_empty"] == 1


def test_unknown_rule_name_is_a_user_error(tmp_path):
    src = write_jsonl(tmp_path / "in" / "x.jsonl", [{"id": "a", "text": PROSE}])
    with pytest.raises(UserError, match="unknown rule"):
        run_stage(clean.STAGE, {"disabled_rules": ["no_such_rule"]}, {"corpus": [src]}, tmp_path / "w")


def test_quality_classifier_is_trained_deterministically_and_filters(tmp_path):
    rng = random.Random(0)
    words = PROSE.split()
    good = [" ".join(rng.sample(words, 40)) + "." for _ in range(60)]
    spam = "buy cheap pills now best price click offer winner free casino bonus deal".split()
    bad = [" ".join(rng.choices(spam, k=30)) + " the of and to with." for _ in range(60)]
    write_jsonl(tmp_path / "good" / "g.jsonl", [{"text": t} for t in good])
    (tmp_path / "bad.txt").write_text("\n".join(bad))
    test_rows = [{"id": "prose", "text": PROSE},
                 {"id": "spam", "text": " ".join(rng.choices(spam, k=40)) + " the of and to the with."}]
    src = write_jsonl(tmp_path / "in" / "x.jsonl", test_rows)
    config = {"quality_good": [str(tmp_path / "good")], "quality_bad": [str(tmp_path / "bad.txt")],
              "disabled_rules": ["language", "mean_word_length", "line_punctuation"]}
    out = run_stage(clean.STAGE, config, {"corpus": [src]}, tmp_path / "w")
    assert [r["id"] for r in read(out, "data")] == ["prose"]
    assert [(r["id"], r["reason"]) for r in read(out, "rejected")] == [("spam", "quality")]
    again = run_stage(clean.STAGE, config, {"corpus": [src]}, tmp_path / "w2")
    assert read(again, "rejected") == read(out, "rejected")
    (tmp_path / "bad.txt").write_text("\n".join(bad[:-1]))  # an edited example file re-runs the stage
    assert run_stage(clean.STAGE, config, {"corpus": [src]}, tmp_path / "w").key != out.key


@pytest.fixture(scope="module")
def cleaned_world(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cw")
    world = run_stage(source.STAGE, {"task_problems_per_family": 300}, {}, workdir)
    return world, run_stage(clean.STAGE, {}, {"corpus": [world]}, workdir)


def test_clean_removes_planted_junk_with_high_precision_and_recall(cleaned_world):
    world, cleaned = cleaned_world
    assert (cleaned.path / "planted.jsonl").read_bytes() == (world.path / "planted.jsonl").read_bytes()
    planted = {json.loads(line)["id"]: json.loads(line)["kind"] for line in open(cleaned.path / "planted.jsonl")}
    junk_kinds = {"junk", "boilerplate", "short", "non_english"}
    rejected = [r["id"] for r in read(cleaned, "rejected")]
    hits = sum(planted.get(i) in junk_kinds for i in rejected)
    precision = hits / len(rejected)
    recall = hits / sum(k in junk_kinds for k in planted.values())
    # Measured on the default world: precision 0.89, recall 1.00. The misses in
    # precision are real prose that lid.176.ftz scores below FineWeb's 0.65 (API
    # docs full of jargon) plus a few Gopher ellipsis/repetition hits.
    assert recall >= 0.97, recall
    assert precision >= 0.85, precision


def test_clean_keeps_task_documents_and_almost_all_prose(cleaned_world):
    world, cleaned = cleaned_world
    sources = {r["id"]: r["source"] for r in read(world, "data")}
    planted = {json.loads(line)["id"] for line in open(world.path / "planted.jsonl")}
    rejected = [r["id"] for r in read(cleaned, "rejected") if r["id"] not in planted]
    tasks = [i for i in sources if sources[i].startswith("tasks/") and i not in planted]
    prose = [i for i in sources if sources[i].startswith("docstrings/") and i not in planted]
    task_loss = sum(sources[i].startswith("tasks/") for i in rejected) / len(tasks)
    prose_loss = sum(sources[i].startswith("docstrings/") for i in rejected) / len(prose)
    assert task_loss <= 0.01, task_loss
    assert prose_loss <= 0.05, prose_loss
