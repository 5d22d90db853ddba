"""Decontamination: n-gram windows, whole-text matching of short and task text, the stage."""

from __future__ import annotations

import json
import random

import pytest

from dsctl.data.decontaminate import (
    DecontaminateJob,
    EvalText,
    NgramIndex,
    decontaminate_shard,
    eval_tokens,
    task_eval_texts,
)

WORDS = [f"tok{i}" for i in range(40)]


def text(lo: int, hi: int) -> str:
    return " ".join(WORDS[lo:hi])


def test_tokens_are_casefolded_words_and_punctuation():
    assert eval_tokens("What is 306+12?") == ["what", "is", "306", "+", "12", "?"]
    assert eval_tokens("  WHAT   is\n306 + 12 ?") == eval_tokens("What is 306+12?")


def test_long_eval_text_matches_on_any_n_token_window():
    index = NgramIndex.build([EvalText("e", text(0, 30))], n=13)
    assert index.match([f"intro {text(10, 23)} outro"]) == ["e"]  # 13 tokens shared
    assert index.match([f"intro {text(10, 22)} outro"]) == [None]  # only 12
    assert index.match([text(10, 23).upper()]) == ["e"]


def test_eval_text_shorter_than_n_matches_only_whole():
    index = NgramIndex.build([EvalText("q", "What is 306 + 12?")], n=13)
    docs = ["Exercise: what is 306+12 ? Think.", "What is 306 + 1?", "what is 306 - 12?", "What is 306 + 12"]
    assert index.match(docs) == ["q", None, None, None]


def test_whole_text_longer_than_n_needs_the_entire_sequence():
    index = NgramIndex.build([EvalText("s", text(0, 20), whole=True)], n=13)
    assert index.match([f"a {text(0, 20)} b", text(0, 19), f"{text(0, 15)} other {text(16, 20)}"]) == ["s", None, None]


def test_windows_shared_by_many_eval_items_are_ignored_as_template():
    template = "you may use + - * / and each number at most once ."
    evals = [EvalText(f"e{i}", f"using the numbers {i} , {i + 1} , make {i * 7} . {template}") for i in range(5)]
    index = NgramIndex.build(evals, n=13, max_shared=1)
    assert index.templates > 0
    assert index.match([f"Something else entirely. {template}"]) == [None]
    assert index.match([f"x {evals[3].text} y"]) == ["e3"]


def test_earliest_match_in_the_document_names_the_eval_item():
    index = NgramIndex.build([EvalText("a", text(0, 13)), EvalText("b", text(20, 33))], n=13)
    assert index.match([f"{text(20, 33)} and later {text(0, 13)}"]) == ["b"]


def test_task_eval_problems_in_a_corpus_are_all_found_and_train_problems_mostly_kept():
    from dsctl.tasks import FAMILIES, problem_document, split_problems

    families = sorted(FAMILIES)
    index = NgramIndex.build(task_eval_texts(families, 200), n=13)
    rng = random.Random(0)
    # any run seed: arithmetic and equations protect their whole dev and test splits
    leaked = [problem_document(p, rng) for f in families for split in ("dev", "test")
              for p in split_problems(f, split, 200, 0 if f == "countdown" else 5)[::10]]
    train = [problem_document(p, rng) for f in families for p in split_problems(f, "worked", 200, 0)]
    assert all(m is not None for m in index.match(leaked))
    flagged = sum(m is not None for m in index.match(train))
    # Train and eval share no problem; the few flagged train documents contain an eval
    # problem's entire worked solution (short countdown solutions recur across problems).
    assert flagged / len(train) < 0.05


def test_a_shard_keeps_its_row_order_for_any_batch_size(tmp_path):
    index = NgramIndex.build([EvalText("e", text(0, 30))], n=13)
    rows = [{"id": str(i), "text": text(i % 25, i % 25 + 14)} for i in range(60)]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = []
    for batch in (7, 1024):
        out = tmp_path / f"out{batch}"
        result = decontaminate_shard(DecontaminateJob(index=3, path=path, out=out, ngrams=index, batch_size=batch))
        outputs.append({p.relative_to(out): p.read_bytes() for p in out.glob("*/part-00003.jsonl")})
    assert outputs[0] == outputs[1]
    caught = [i for i in range(60) if i % 25 <= 17]
    assert result["caught"] == {"e": len(caught)}
    rejected = [json.loads(line) for line in (out / "rejected" / "part-00003.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == [str(i) for i in caught] and {r["eval_id"] for r in rejected} == {"e"}


@pytest.fixture
def corpus_dir(tmp_path):
    from dsctl.tasks import problem_document, split_problems

    rng = random.Random(1)
    leaked = split_problems("arithmetic", "test", 3, seed=0)
    rows = [{"id": f"clean{i}", "text": f"An ordinary document number {i} about nothing in particular."}
            for i in range(20)]
    rows += [{"id": f"leak{i}", "text": problem_document(p, rng)} for i, p in enumerate(leaked)]
    rows.append({"id": "fileleak", "text": f"Copied from the benchmark: {text(0, 25)}"})
    (tmp_path / "src" / "data").mkdir(parents=True)
    with open(tmp_path / "src" / "data" / "part-00000.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with open(tmp_path / "bench.jsonl", "w") as fh:
        fh.write(json.dumps({"id": "bench-1", "question": text(0, 30)}) + "\n")
    (tmp_path / "src" / "planted.jsonl").write_text('{"id": "x", "kind": "junk"}\n')
    return tmp_path


def test_stage_rejects_contaminated_rows_with_eval_id(corpus_dir):
    from dsctl.pipeline.testing import run_stage
    from stages import decontaminate

    config = {
        "families": ["arithmetic"],
        "eval_problems_per_family": 50,
        "eval_files": [str(corpus_dir / "bench.jsonl")],
        "eval_text_field": "question",
    }
    art = run_stage(decontaminate.STAGE, config, {"corpus": [corpus_dir / "src"]}, corpus_dir / "work", seed=0)
    assert art.metrics["contaminated"] == 4 and art.metrics["kept"] == 20
    assert art.metrics["contaminated_arithmetic"] == 3 and art.metrics["contaminated_bench.jsonl"] == 1
    rejected = [json.loads(line) for line in open(art.path / "rejected" / "part-00000.jsonl")]
    assert {r["reason"] for r in rejected} == {"contaminated"}
    assert {r["id"]: r["eval_id"] for r in rejected}["fileleak"] == "bench-1"
    assert (art.path / "planted.jsonl").exists()


def test_stage_names_an_unknown_task_family(corpus_dir):
    from dsctl.errors import StageFailed, UserError
    from dsctl.pipeline.testing import run_stage
    from stages import decontaminate

    with pytest.raises((UserError, StageFailed), match="unknown task families"):
        run_stage(decontaminate.STAGE, {"families": ["algebra"]}, {"corpus": [corpus_dir / "src"]}, corpus_dir / "w")


def test_stage_protects_eval_problems_at_the_eval_stage_difficulty():
    from dsctl.tasks import problem_document
    from dsctl.tasks.config import held_out_problems
    from stages.decontaminate import DecontaminateConfig, eval_index

    # What stages/eval.py evaluates by default: its problems at the families' default difficulty.
    from stages.eval import EvalConfig

    cfg = EvalConfig()
    assert DecontaminateConfig().eval_problems_per_family >= cfg.eval_problems
    index, _ = eval_index(DecontaminateConfig(eval_problems_per_family=cfg.eval_problems))
    problems = held_out_problems(cfg.families, cfg.eval_split, cfg.eval_problems, cfg.difficulty)
    rng = random.Random(0)
    assert all(m is not None for m in index.match([problem_document(p, rng) for p in problems]))
