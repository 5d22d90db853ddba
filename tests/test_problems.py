"""Problem sets and verifiers: what each verifier accepts and rejects, the problems stage
on files and datasets (splits, field mapping, counted bad rows), user reward functions,
`dsctl score`, and the proof that a problem set is the same path as the built-in families."""

import json
import textwrap
from dataclasses import replace

import pytest

from dsctl.errors import UserError
from dsctl.pipeline.testing import run_stage
from dsctl.tasks import Problem, reward
from dsctl.tasks.config import held_out_problems, task_problems
from dsctl.tasks.grading import Grading, RewardError, check_reference, check_reward_errors, grade
from dsctl.tasks.problem_set import ProblemSet
from stages import problems as problems_stage


def _problem(answer: str, verifier: str, choices=None, **grading) -> Problem:
    data = {"choices": choices} if choices else {}
    reference = check_reference(verifier, answer, choices)
    return Problem("set", "set-1", "q", reference, "", data, "test", Grading(verifier, **grading))


# (verifier, reference, completion, expected reason): the closing note's table comes from here
VERDICTS = [
    ("exact", "Paris", "<answer>paris</answer>", "correct"),
    ("exact", "Paris", "<answer> Paris. </answer>", "correct"),
    ("exact", "Paris", "<answer>Lyon</answer>", "wrong"),
    ("exact", "Paris", "Paris", "no_answer"),
    ("number", "1234", "<answer>1,234</answer>", "correct"),
    ("number", "1234", "<answer>1 234</answer>", "correct"),
    ("number", "0.5", "<answer>1/2</answer>", "correct"),
    ("number", "12", "<answer>$12.00</answer>", "correct"),
    ("number", "-7", "<answer>x = −7</answer>", "correct"),
    ("number", "45", "<answer>45%</answer>", "correct"),
    ("number", "0.3333333", "<answer>1/3</answer>", "correct"),  # within the 1e-6 relative tolerance
    ("number", "12", "<answer>12.5</answer>", "wrong"),
    ("number", "12", "<answer>twelve</answer>", "wrong"),
    ("number", "1234", "<answer>1,23,4</answer>", "wrong"),  # not a thousands grouping
    ("math", "\\frac{1}{2}", "so \\boxed{0.5}", "correct"),
    ("math", "\\frac{1}{2}", "<answer>\\boxed{\\dfrac{2}{4}}</answer>", "correct"),
    ("math", "x^2+2x+1", "<answer>$(x+1)^2$</answer>", "correct"),
    ("math", "\\sqrt{2}", "\\boxed{2^{1/2}}", "correct"),
    ("math", "\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", "wrong"),
    ("math", "3", "no box and no tags", "no_answer"),
]


@pytest.mark.parametrize("verifier,reference,completion,reason", VERDICTS)
def test_each_verifier_accepts_and_rejects(verifier, reference, completion, reason):
    assert grade(_problem(reference, verifier), completion).reason == reason


@pytest.mark.parametrize("completion,reason", [
    ("<answer>B</answer>", "correct"), ("<answer>(b)</answer>", "correct"), ("<answer>B. Paris</answer>", "correct"),
    ("<answer>paris</answer>", "correct"), ("<answer>A</answer>", "wrong"), ("<answer>E</answer>", "wrong"),
    ("<answer>Berlin</answer>", "wrong"),
])
def test_choice_reads_a_letter_or_the_choice_text(completion, reason):
    problem = _problem("1", "choice", choices=["Rome", "Paris", "Oslo", "Bern"])  # a 0-based index: Paris
    assert problem.answer == "B"
    assert grade(problem, completion).reason == reason


def test_answer_from_is_a_setting():
    p = _problem("42", "number", answer_from="last_number")
    assert grade(p, "I think it is 41, no: 42").correct
    assert not grade(_problem("42", "number"), "I think it is 41, no: 42").correct  # default: the tags


@pytest.mark.parametrize("verifier,reference,choices", [
    ("number", "about twelve", None), ("math", "\\frac{", None), ("choice", "F", ["a", "b"]), ("exact", " ", None),
])
def test_a_reference_the_verifier_cannot_read_is_refused(verifier, reference, choices):
    with pytest.raises(ValueError):
        check_reference(verifier, reference, choices)


def test_unknown_verifier_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown verifier 'fuzzy'"):
        Grading("fuzzy")


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def length_bonus(row, completion):
            return 0.5 if row["answer"] in completion else 0.0

        def broken(row, completion):
            return {"not": "a number"} if "boom" in completion else 1.0
    """))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_a_user_function_returns_float_rewards_and_its_failures_are_errors(reward_module):
    p = replace(_problem("42", "exact"), grading=Grading("my_rewards:length_bonus"))
    verdict = grade(p, "it is 42")
    assert verdict.score == 0.5 and verdict.reason == "partial"
    assert grade(p, "no").reason == "wrong"
    broken = replace(p, grading=Grading("my_rewards:broken"))
    assert grade(broken, "fine").reason == "correct"
    failed = grade(broken, "boom")
    assert failed.reason == "error" and "a reward must be a finite number" in failed.detail
    missing = grade(replace(p, grading=Grading("my_rewards:nope")), "x")
    assert missing.reason == "error" and "has no function nope" in missing.detail
    scores = [reward(broken, c) for c in ("boom", "fine", "fine", "fine")]
    assert check_reward_errors(scores, 0.25, "test") == 1  # one in four is allowed
    with pytest.raises(RewardError, match=r"(?s)1 of 2 rewards could not be computed.*finite number"):
        check_reward_errors(scores[:2], 0.25, "test")


# -- the problems stage ------------------------------------------------------------------------
def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_problems_from_gsm8k_style_files_keep_named_splits_and_count_bad_rows(tmp_path):
    data = tmp_path / "gsm"
    data.mkdir()
    train = [{"question": f"Tom has {i} apples and buys {i + 990}. How many now?",
              "answer": f"He has {i} + {i + 990} = <<{i}+{i + 990}={2 * i + 990}>>{2 * i + 990}.\n#### {2 * i + 990:,}"}
             for i in range(400)]
    train += [{"answer": "#### 3"}, {"question": "No marker", "answer": "just prose"}, "{not json",
              {"question": "Bad ref", "answer": "#### lots"}, train[0]]
    _write_jsonl(data / "train.jsonl", train)
    _write_jsonl(data / "test.jsonl",
                 [{"question": f"What is {i} times 2?", "answer": f"#### {2 * i}"} for i in range(30)]
                 + [{"question": train[1]["question"], "answer": "#### 7"}])
    config = {"paths": [str(data)], "answer_pattern": "#### (.+)", "solution_field": "answer", "verifier": "number"}
    artifact = run_stage(problems_stage.STAGE, config, {}, tmp_path / "work")
    ps = ProblemSet(artifact.path)
    counts = ps.counts
    assert counts["test"] == 31 and counts["dev"] > 0  # test as named; dev carved from train by hash
    assert counts["worked"] + counts["answer_only"] + counts["dev"] == 400 - 1  # the one shared with test
    assert 0.3 < counts["worked"] / (counts["worked"] + counts["answer_only"]) < 0.7  # worked_share 0.5
    skipped = dict(ps.meta["skipped"])
    # the row shared with test is a training overlap, or a duplicate if its hash carved it into dev
    assert skipped.pop("duplicate_prompt") + skipped.pop("overlaps_dev_or_test", 0) == 2
    assert skipped == {"no_prompt": 1, "answer_pattern_no_match": 1, "malformed_json": 1, "reference_unreadable": 1}
    worked = ps.split("worked")
    assert all(p.solution.startswith("He has") and "####" not in p.solution for p in worked)
    assert not any(p.solution for p in ps.split("answer_only"))  # never trained on: not even kept
    big = next(p for p in worked if "," in p.answer)  # "#### 1,203": GSM8K writes thousands separators
    assert grade(big, f"<answer>{big.answer.replace(',', '')}</answer>").correct
    assert ps.draw("test", 5) == ps.draw("test", 5) and len(ps.draw("test", 0)) == 31
    with pytest.raises(UserError, match="asks problem set 'gsm' for more test problems than it has"):
        ps.draw("test", 32, "eval_problems")


def test_an_unsplit_file_is_divided_by_hash_and_identical_prompts_stay_together(tmp_path):
    rows = [{"q": f"Capital number {i}?", "a": f"city {i}"} for i in range(1000)]
    _write_jsonl(tmp_path / "facts.jsonl", rows)
    config = {"paths": [str(tmp_path / "facts.jsonl")], "prompt_field": "q", "answer_field": "a", "verifier": "exact"}
    ps = ProblemSet(run_stage(problems_stage.STAGE, config, {}, tmp_path / "work").path)
    counts = ps.counts
    assert 60 < counts["test"] < 140 and 60 < counts["dev"] < 140
    assert counts["worked"] == 0  # no solutions: every training row is answer-only
    assert sum(counts.values()) == 1000
    held = {p.prompt for s in ("dev", "test") for p in ps.split(s)}
    assert not held & {p.prompt for p in ps.split("answer_only")}


def test_a_math_style_set_takes_its_reference_from_the_last_boxed_answer(tmp_path):
    rows = [{"problem": f"Solve {i}x = {i}/2.", "solution": f"Divide by {i}: $x = \\boxed{{\\frac{{1}}{{2}}}}$.",
             "level": 1} for i in range(2, 200)] + [{"problem": "No box", "solution": "x is one half"}]
    _write_jsonl(tmp_path / "math.jsonl", rows)
    config = {"paths": [str(tmp_path / "math.jsonl")], "prompt_field": "problem", "answer_field": "solution",
              "solution_field": "solution", "answer_pattern": "boxed", "verifier": "math"}
    ps = ProblemSet(run_stage(problems_stage.STAGE, config, {}, tmp_path / "work").path)
    assert ps.meta["skipped"] == {"answer_pattern_no_match": 1}
    p = ps.split("worked")[0]
    assert p.answer == "\\frac{1}{2}" and p.solution.startswith("Divide by") and "boxed" not in p.solution
    assert grade(p, "so the answer is \\boxed{0.5}").correct and grade(p, "<answer>$1/2$</answer>").correct
    assert grade(p, "\\boxed{2}").reason == "wrong" and p.data["row"]["level"] == 1


def test_a_datasets_folder_with_a_choice_set(tmp_path):
    import datasets

    def rows(n, start):
        return {"question": [f"Which is item {i}?" for i in range(start, start + n)],
                "choices": [["red", "green", "blue", f"item {i}"] for i in range(start, start + n)],
                "answer": [3] * n}

    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(50, 0)),
                          "validation": datasets.Dataset.from_dict(rows(10, 100)),
                          "test": datasets.Dataset.from_dict(rows(10, 200))}).save_to_disk(str(tmp_path / "mc"))
    config = {"dataset": str(tmp_path / "mc"), "choices_field": "choices", "verifier": "choice"}
    ps = ProblemSet(run_stage(problems_stage.STAGE, config, {}, tmp_path / "work").path)
    assert ps.counts["dev"] == 10 and ps.counts["test"] == 10 and ps.counts["answer_only"] == 50
    p = ps.split("test")[0]
    assert p.prompt.endswith("A. red\nB. green\nC. blue\nD. item 200") and p.answer == "D"
    assert grade(p, "<answer>D</answer>").correct and grade(p, "<answer>item 200</answer>").correct


def test_nothing_usable_and_bad_settings_are_one_sentence(tmp_path):
    _write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(UserError, match="no usable problems .*answer_pattern_no_match"):
        run_stage(problems_stage.STAGE, {"paths": [str(tmp_path / "x.jsonl")], "answer_pattern": "#### (.+)"}, {},
                  tmp_path / "work")
    for bad, message in (({"verifier": "fuzzy"}, "unknown verifier"), ({"answer_pattern": "(("}, "not a regex"),
                         ({"answer_from": "tail"}, "answer_from must be one of")):
        with pytest.raises(UserError, match=message):
            run_stage(problems_stage.STAGE, {"paths": [str(tmp_path / "x.jsonl")], **bad}, {}, tmp_path / "work")


def test_a_verifier_module_that_does_not_import_fails_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(UserError, match="cannot import no_such_module"):
        run_stage(problems_stage.STAGE, {"paths": [str(tmp_path / "x.jsonl")], "verifier": "no_such_module:f"}, {},
                  tmp_path / "work")


def test_the_built_in_families_make_the_same_artifact_kind(tmp_path):
    config = {"families": ["arithmetic"], "train_problems": 30, "eval_problems": 20}
    ps = ProblemSet(run_stage(problems_stage.STAGE, config, {}, tmp_path / "work").path)
    assert ps.split("answer_only") == task_problems(["arithmetic"], "answer_only", 30, 0)
    assert ps.split("test") == held_out_problems(["arithmetic"], "test", 20)
    p = ps.split("test")[0]
    assert p.grading.verifier == "family" and grade(p, f"<answer>{p.answer}</answer>").correct


def test_dsctl_score_prints_each_reward_and_why(tmp_path, capsys):
    from dsctl.cli import main

    _write_jsonl(tmp_path / "p.jsonl", [{"question": "What is 6 x 7?", "answer": "42"},
                                        {"question": "What is 2 + 2?", "answer": "4"}])
    artifact = run_stage(problems_stage.STAGE, {"paths": [str(tmp_path / "p.jsonl")], "worked_share": 0.0}, {},
                         tmp_path / "work")
    tries = [{"prompt": "What is 6 x 7?", "completion": "<answer>42</answer>"},
             {"prompt": "What is 2 + 2?", "completion": "<answer>5</answer>"},
             {"prompt": "What is 2 + 2?", "completion": "four"},
             {"prompt": "Unknown?", "completion": "<answer>1</answer>"}]
    _write_jsonl(tmp_path / "tries.jsonl", tries)
    main(["--workdir", str(tmp_path / "work"), "score", artifact.key, str(tmp_path / "tries.jsonl")])
    out = capsys.readouterr().out
    assert "4 completions, mean reward 0.250" in out
    for reason in ("correct", "wrong", "no_answer", "unknown_problem"):
        assert reason in out
    assert "'5' / '4'" in out


def test_decontaminate_protects_a_problem_sets_dev_and_test_prompts(tmp_path):
    from stages import decontaminate

    held = ("A farmer plants 17 rows of 23 cabbages and sells a third of them at the market on Sunday. "
            "How many are left?")
    (tmp_path / "set").mkdir()
    _write_jsonl(tmp_path / "set" / "test.jsonl", [{"question": held, "answer": "261"}])
    ps_art = run_stage(problems_stage.STAGE, {"paths": [str(tmp_path / "set")]}, {}, tmp_path / "work")
    corpus = tmp_path / "corpus" / "data"
    corpus.mkdir(parents=True)
    _write_jsonl(corpus / "part-00000.jsonl", [{"id": "a", "text": "Blog post. " + held + " Answer: 261."},
                                               {"id": "b", "text": "An unrelated page about cabbages and farms."}])
    out = run_stage(decontaminate.STAGE, {"families": ["arithmetic"]}, {"corpus": [tmp_path / "corpus"],
                                                                         "problems": [ps_art]}, tmp_path / "work")
    kept = [json.loads(line)["id"] for line in (out.path / "data" / "part-00000.jsonl").read_text().splitlines()]
    assert kept == ["b"] and out.metrics["contaminated_set"] == 1


# -- one path: the built-in family and its GSM8K-layout export give the same numbers -----------
from tests.test_grpo_stage import EASY, sft_checkpoint  # noqa: E402,F401 - the tiny policy fixture


def test_arithmetic_exported_as_gsm8k_gives_grpo_and_eval_the_same_metrics(sft_checkpoint, tmp_path):  # noqa: F811
    import torch

    import stages.eval as eval_stage
    import stages.grpo as grpo
    from dsctl.train.artifacts import load_model

    ckpt, _, _ = sft_checkpoint
    from examples.arithmetic_gsm8k import write_gsm8k_layout

    families, difficulty, n_train, n_eval = ["arithmetic"], {"arithmetic": EASY}, 16, 10
    export = tmp_path / "arith_gsm8k"
    # grpo draws answer-only problems: the export's train rows are those, and with no
    # solution_field every one of them is answer-only in the set too
    write_gsm8k_layout(export, n_train, n_eval, seed=0, difficulty=EASY, train_splits=("answer_only",))
    work = tmp_path / "work"
    ps = run_stage(problems_stage.STAGE, {"paths": [str(export)], "answer_pattern": "#### (.+)"}, {}, work)
    assert ProblemSet(ps.path).counts == {"worked": 0, "answer_only": n_train, "dev": n_eval, "test": n_eval}

    common = {"max_steps": 2, "group_size": 4, "prompts_per_step": 4, "max_new_tokens": 12, "lr": 1e-3,
              "train_problems": n_train, "eval_problems": n_eval}
    built_in = run_stage(grpo.STAGE, {**common, "families": families, "difficulty": difficulty},
                         {"checkpoint": [ckpt]}, work)
    from_set = run_stage(grpo.STAGE, common, {"checkpoint": [ckpt], "problems": [ps]}, work)
    assert built_in.key != from_set.key
    steps = [[json.loads(line) for line in (a.path / "metrics.jsonl").read_text().splitlines()]
             for a in (built_in, from_set)]
    assert any("policy_loss" in r for r in steps[0]), "no reward signal: the comparison would prove little"
    for a, b in zip(*steps):
        for key in ("reward_mean", "accuracy", "format_rate", "completion_len", "groups_with_signal", "policy_loss",
                    "loss"):
            assert a.get(key) == b.get(key), key
    for key in ("before_accuracy", "after_accuracy", "before_format_rate", "after_format_rate", "train_reward_last"):
        assert built_in.metrics[key] == from_set.metrics[key], key
    for (name, x), (_, y) in zip(load_model(built_in).state_dict().items(), load_model(from_set).state_dict().items()):
        assert torch.equal(x, y), name

    settings = {"eval_problems": n_eval, "samples": 8, "pass_ks": [1, 8], "max_new_tokens": 12, "threads": 1,
                "temperature": 1.0}
    reports = [json.loads((run_stage(eval_stage.STAGE, {**settings, **extra}, inputs, work).path
                           / "report.json").read_text())
               for extra, inputs in (({"families": families, "difficulty": difficulty}, {"checkpoint": [built_in]}),
                                     ({}, {"checkpoint": [built_in], "problems": [ps]}))]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert next(iter(reports[0]["metrics"].values()))["pass@8"] > 0  # equal, and not merely both zero
    greedy = [[r["greedy_text"] for d in report["details"].values() for r in d["task_scores"]] for report in reports]
    assert greedy[0] == greedy[1] and len(greedy[0]) == n_eval


def test_grpo_stops_with_the_first_traceback_when_a_reward_function_keeps_failing(sft_checkpoint, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    import stages.grpo as grpo

    (tmp_path / "flaky_rewards.py").write_text("def score(row, completion):\n    return 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    _write_jsonl(tmp_path / "sums.jsonl",
                 [{"question": f"{i}+{j}=", "answer": str(i + j)} for i in range(10) for j in range(10)])
    ps = run_stage(problems_stage.STAGE, {"paths": [str(tmp_path / "sums.jsonl")], "verifier": "flaky_rewards:score"},
                   {}, tmp_path / "work")
    ckpt, _, _ = sft_checkpoint
    config = {"max_steps": 1, "group_size": 2, "prompts_per_step": 2, "max_new_tokens": 8, "train_problems": 4,
              "eval_problems": 2}
    with pytest.raises(UserError, match=r"(?s)grpo rollout: 4 of 4 rewards could not be computed "
                                        r".*4 ZeroDivisionError.*1 / 0"):
        run_stage(grpo.STAGE, config, {"checkpoint": [ckpt], "problems": [ps]}, tmp_path / "work")
