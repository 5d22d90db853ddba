import json

import pytest

from dsctl.errors import StageFailed
from dsctl.eval.task_accuracy import greedy_accuracy
from dsctl.pipeline.testing import run_stage
from dsctl.rl import rejection
from dsctl.sampling import Completion
from dsctl.tasks import reasoning_target, reward
from dsctl.tasks.config import task_problems
from stages import rejection_sample as rs
from tests.sft_support import EASY, make_tokenizer, memorized_checkpoint

FAMILIES = ["arithmetic", "equations"]
CONFIG = {"families": FAMILIES, "difficulty": EASY, "train_problems": 4, "samples_per_prompt": 4, "temperature": 1.0,
          "top_p": 1.0, "max_new_tokens": 100, "prompts_per_chunk": 2}


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """A tiny model that answers the stage's own 4 prompts by heart."""
    root = tmp_path_factory.mktemp("rs")
    make_tokenizer(root / "tok")
    problems = task_problems(FAMILIES, "answer_only", CONFIG["train_problems"], seed=0 + 1, difficulty=EASY)
    return memorized_checkpoint(root / "ckpt", root / "tok", problems, steps=80), problems


def _c(text, finished=True):
    return Completion(text, n_tokens=len(text) // 3, finished=finished)


def test_filter_keeps_verified_formatted_distinct_completions_up_to_the_cap():
    p = task_problems(["arithmetic"], "answer_only", 1, seed=0, difficulty=EASY)[0]
    good = reasoning_target(p)
    other_good = "<think>I computed it another way.</think><answer>" + p.answer + "</answer>"
    wrong = "<think>guess</think><answer>" + str(int(p.answer) + 1) + "</answer>"
    unformatted = "The answer is <answer>" + p.answer + "</answer>"
    outs = [_c(good), _c(good), _c(wrong), _c(unformatted), _c(good[:-9], finished=False), _c(other_good),
            _c(other_good + " ")]
    verdicts = [v for v, _, _ in rejection.filter_completions(p, outs, require_format=True, max_per_prompt=0)]
    assert verdicts == ["accepted", "duplicate", "wrong", "format", "too_long", "accepted", "duplicate"]
    capped = [v for v, _, _ in rejection.filter_completions(p, outs, require_format=True, max_per_prompt=1)]
    assert capped == ["accepted", "duplicate", "wrong", "format", "too_long", "over_cap", "over_cap"]
    lenient = [v for v, _, _ in rejection.filter_completions(p, outs, require_format=False, max_per_prompt=0)]
    assert lenient[3] == "accepted"


def test_acceptance_stats_count_prompts_rates_and_lengths():
    problems = task_problems(FAMILIES, "answer_only", 4, seed=0, difficulty=EASY)
    rows = [{"family": "arithmetic", "problem_id": problems[0].id, "tokens": 10},
            {"family": "arithmetic", "problem_id": problems[0].id, "tokens": 20},
            {"family": "equations", "problem_id": problems[1].id, "tokens": 30}]
    counts = {"arithmetic": {"sampled": 8, "accepted": 2, "wrong": 6},
              "equations": {"sampled": 8, "accepted": 1, "too_long": 7}}
    stats = rejection.acceptance_stats(problems, rows, counts, k=4)
    assert stats["accepted"] == 3 and stats["sampled"] == 16 and stats["acceptance_rate"] == round(3 / 16, 4)
    assert stats["prompts_with_accepted"] == 2 and stats["rejected_wrong"] == 6 and stats["rejected_too_long"] == 7
    arith = stats["families"]["arithmetic"]
    assert arith["prompts"] == 2 and arith["prompts_with_accepted"] == 1 and arith["mean_tokens"] == 15.0
    assert arith["acceptance_rate"] == 0.25


def test_greedy_accuracy_scores_a_model_that_knows_the_answers(memorized):
    from dsctl.pipeline.store import Artifact
    from dsctl.tokenizer import Tokenizer
    from dsctl.train.artifacts import load_model

    ckpt, problems = memorized
    model = load_model(Artifact(ckpt, "k", "checkpoint", {}))
    result = greedy_accuracy(model, Tokenizer.load(ckpt), problems, max_new_tokens=100)
    assert result.accuracy == 1.0 and result.format_rate == 1.0
    assert result.per_family == {"arithmetic": 1.0, "equations": 1.0}
    assert result.tokens_per_s > 0 and result.mean_tokens > 10
    unseen = task_problems(FAMILIES, "test", 4, seed=0, difficulty=EASY)
    assert greedy_accuracy(model, Tokenizer.load(ckpt), unseen, max_new_tokens=100).accuracy < 1.0


def test_stage_writes_only_verified_samples_with_consistent_stats(tmp_path, memorized):
    ckpt, problems = memorized
    artifact = run_stage(rs.STAGE, CONFIG, {"checkpoint": [ckpt]}, tmp_path / "work")
    rows = [json.loads(line) for line in (artifact.path / "samples.jsonl").read_text().splitlines()]
    stats = json.loads((artifact.path / "stats.json").read_text())
    by_id = {p.id: p for p in problems}
    assert rows and len(rows) == stats["accepted"] == artifact.metrics["accepted"]
    assert stats["sampled"] == 16
    assert stats["accepted"] + sum(stats[f"rejected_{r}"] for r in rejection.REJECT_REASONS) == 16
    for r in rows:
        score = reward(by_id[r["problem_id"]], r["completion"])
        assert score["correct"] == 1 and score["format"] == 1
        assert r["correct"] and r["prompt"] == by_id[r["problem_id"]].prompt
    pairs = [(r["problem_id"], r["completion"]) for r in rows]
    assert len(set(pairs)) == len(pairs)  # no exact duplicates
    assert set(stats["families"]) == set(FAMILIES)


def test_resumed_run_gives_identical_samples(tmp_path, memorized, monkeypatch):
    ckpt, _ = memorized
    straight = run_stage(rs.STAGE, CONFIG, {"checkpoint": [ckpt]}, tmp_path / "a")
    real_chunk, calls, crash = rejection.sample_chunk, [], [True]

    def chunk_that_may_crash(*args, **kwargs):
        calls.append(kwargs["first_batch"])
        if crash[0] and len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(rejection, "sample_chunk", chunk_that_may_crash)
    with pytest.raises(StageFailed):
        run_stage(rs.STAGE, CONFIG, {"checkpoint": [ckpt]}, tmp_path / "b")
    crash[0] = False
    resumed = run_stage(rs.STAGE, CONFIG, {"checkpoint": [ckpt]}, tmp_path / "b")
    assert calls == [0, 1, 1]  # the resumed attempt starts at the chunk that crashed
    assert (resumed.path / "samples.jsonl").read_text() == (straight.path / "samples.jsonl").read_text()
    assert (json.loads((resumed.path / "stats.json").read_text())
            == json.loads((straight.path / "stats.json").read_text()))
