"""Reasoning tasks: verifiers, answer parsing, rewards and the four splits."""

import random

import pytest

from dsctl.tasks import (
    FAMILIES,
    get_family,
    parse_answer,
    problem_document,
    reasoning_target,
    reward,
    split_of,
    split_problems,
    verify_completion,
)
from dsctl.tasks.base import SPLITS, split_capacity
from dsctl.tasks.expr import ExpressionError, evaluate


def wrap(answer: str) -> str:
    return f"<think>working</think><answer>{answer}</answer>"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_verifier_accepts_reference_and_rejects_wrong_answers(family):
    for p in split_problems(family, "worked", 60, seed=3):
        assert verify_completion(p, reasoning_target(p)), p
        assert not verify_completion(p, wrap("999999")), p
        assert not verify_completion(p, wrap("")), p
        assert not verify_completion(p, "no tags at all " + p.answer), p


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_four_splits_share_no_problem_at_any_seed(family):
    drawn = {split: {p.id for seed in (0, 7) for p in split_problems(family, split, 100, seed=seed)}
             for split in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not drawn[a] & drawn[b], (a, b)
    assert all(split_of(p) == "test" for p in split_problems(family, "test", 50, seed=0))


def test_commuted_twins_are_one_exercise_in_one_split():
    from dsctl.tasks.arithmetic import problem

    for a, b in [(12, 87), (37, 48), (5, 90), (100, 999)]:
        for op in "+*":
            assert problem(a, b, op).split == problem(b, a, op).split
            assert problem(a, b, op).id != problem(b, a, op).id  # still two problems
    # and every split holds some of each: the exercise key does not collapse them
    splits = {problem(a, b, "+").split for a in range(10, 40) for b in range(10, 40)}
    assert splits == set(SPLITS)


def test_dev_and_test_draws_are_the_same_at_every_run_seed():
    from dsctl.tasks.config import held_out_problems

    first = held_out_problems(["arithmetic", "equations"], "test", 40)
    assert first == held_out_problems(["arithmetic", "equations"], "test", 40)
    assert first[:10] == held_out_problems(["arithmetic", "equations"], "test", 10)  # a prefix
    whole = held_out_problems(["arithmetic"], "dev", 0)
    assert {p.split for p in whole} == {"dev"} and len(whole) == len({p.id for p in whole})
    assert len(whole) == sum(p.split == "dev" for p in FAMILIES["arithmetic"].enumerate("dev"))
    with pytest.raises(ValueError, match="dev or test"):
        held_out_problems(["arithmetic"], "worked", 5)


def test_whole_splits_partition_the_enumerated_problems():
    from dsctl.tasks.base import whole_split

    family = FAMILIES["equations"]
    knobs = {"max_coef": 4, "max_solution": 5, "max_offset": 6}
    parts = [whole_split(family, split, knobs) for split in SPLITS]
    ids = [p.id for part in parts for p in part]
    assert len(ids) == len(set(ids)) == family.size(**knobs)
    with pytest.raises(ValueError, match="cannot list its problems"):
        whole_split(FAMILIES["countdown"], "test")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_split_is_deterministic_per_seed(family):
    a = split_problems(family, "worked", 50, seed=11)
    b = split_problems(family, "worked", 50, seed=11)
    c = split_problems(family, "worked", 50, seed=12)
    assert a == b
    assert [p.id for p in a] != [p.id for p in c]


def test_difficulty_knobs_change_the_problems():
    big = split_problems("arithmetic", "worked", 20, 0, {"min_digits": 5, "max_digits": 5, "ops": "+"})
    assert all(len(str(p.data["a"])) == 5 and p.data["op"] == "+" for p in big)
    with pytest.raises(ValueError, match="unknown difficulty"):
        split_problems("arithmetic", "worked", 5, 0, {"digits": 3})


def test_too_small_problem_space_fails_clearly():
    with pytest.raises(ValueError, match="distinct"):
        split_problems("arithmetic", "worked", 500, 0, {"min_digits": 1, "max_digits": 1, "ops": "+"})


def test_arithmetic_scratchpad_writes_every_column_and_carry():
    fam = get_family("arithmetic")
    problems = split_problems("arithmetic", "worked", 300, 0)
    add = next(p for p in problems if p.data["op"] == "+")
    sub = next(p for p in problems if p.data["op"] == "-")
    for p in (add, sub):
        a, b = p.data["a"], p.data["b"]
        head, *columns = p.solution.split(" ")
        assert head == f"{a:02d}{p.data['op']}{b:02d}:"
        assert len(columns) == 2  # one step per column of the 2-digit default, carry-in included
        assert int(p.answer) == (a + b if p is add else a - b)
    assert len(add.answer) == 3 and len(sub.answer) == 2  # zero-padded to the result's full width
    assert fam.verify(add, str(int(add.answer))) and fam.verify(add, add.answer)  # 085 and 85 are both right


def test_arithmetic_scratchpad_is_exact_for_every_operator():
    from dsctl.tasks.arithmetic import worked_solution

    assert worked_solution(37, 48, "+") == ("37+48: 7+8+0=15 3+4+1=08", "085")
    assert worked_solution(52, 7, "-") == ("52-07: 12-7-0=5 05-0-1=4", "45")
    assert worked_solution(37, 8, "*") == ("37*8: 7*8+0=56 3*8+5=29", "296")
    rng = random.Random(0)
    for op in "+-*":
        for _ in range(2000):
            a, b = rng.randint(0, 9999), rng.randint(0, 999)
            a, b = (b, a) if op == "-" and b > a else (a, b)
            assert int(worked_solution(a, b, op)[1]) == {"+": a + b, "-": a - b, "*": a * b}[op]


def test_countdown_accepts_alternative_expression_and_rejects_reused_numbers():
    p = next(p for p in split_problems("countdown", "worked", 200, 0) if p.data["target"] > 1)
    numbers, target = p.data["numbers"], p.data["target"]
    fam = get_family("countdown")
    # Re-spellings of the reference are right; extra or reused numbers are not.
    alternatives = [f"{p.answer} * 1", f"({p.answer})", f"{p.answer} = {target}"]
    assert fam.verify(p, alternatives[1]) and fam.verify(p, alternatives[2])
    if 1 not in numbers:
        assert not fam.verify(p, alternatives[0])  # 1 was not given
    a = numbers[0]
    assert not fam.verify(p, f"{a} + {a} + {a} + {a} + {a}")  # reuse
    assert not fam.verify(p, f"{p.answer} = {target + 1}")


def test_countdown_accepts_any_correct_expression_not_only_the_reference():
    from dsctl.tasks.base import make_problem

    p = make_problem("countdown", {"numbers": [2, 3, 4, 6], "target": 24}, "make 24", "4 * 6", "")
    fam = get_family("countdown")
    for good in ("4 * 6", "6 * 4", "(6 - 3) * 2 * 4", "(3 - 2) * 4 * 6", "2 * 3 * 4", "6 × 4", "(2 + 6) * 3"):
        assert fam.verify(p, good), good
    for bad in ("4 * 6 * 1", "3 * 8", "6 * 6 - 12", "4 * 6 +", "__import__('os')", "2 * 2 * 6", "6 / 0", "-2 * -12"):
        assert not fam.verify(p, bad), bad


def test_expression_evaluator_is_exact_and_safe():
    assert evaluate("7 / 2 * 2") == (7, [7, 2, 2])
    assert evaluate("(1 + 2) × 3 − 4 ÷ 2")[0] == 7
    for bad in ("", "1 +", "2 ** 3", "abs(1)", "1 / (2 - 2)", "(1 + 2", "1" + "+1" * 200):
        with pytest.raises(ExpressionError):
            evaluate(bad)


def test_equations_accept_equivalent_spellings():
    p = next(p for p in split_problems("equations", "worked", 50, 0) if int(p.answer) > 0)
    fam = get_family("equations")
    x = int(p.answer)
    for good in (str(x), f"x = {x}", f"{x}.0", f"{2 * x}/2"):
        assert fam.verify(p, good), good
    for bad in (str(x + 1), "x", f"y = {x}z", ""):
        assert not fam.verify(p, bad), bad


def test_parse_answer_edge_cases():
    assert parse_answer("no tags") is None
    assert parse_answer("<answer>unclosed") is None
    assert parse_answer("<answer> 12 </answer>") == "12"
    assert parse_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert parse_answer("<answer>a\nb</answer>") == "a\nb"
    assert parse_answer("") is None


def test_reward_separates_format_from_correctness():
    p = split_problems("arithmetic", "test", 1, 0)[0]
    assert reward(p, reasoning_target(p)) == {"score": 1, "correct": 1, "format": 1, "total": 1.1,
                                              "reason": "correct", "detail": p.answer}
    assert reward(p, f"<answer>{p.answer}</answer>") == {"score": 1, "correct": 1, "format": 0, "total": 1,
                                                         "reason": "correct", "detail": p.answer}
    wrong = reward(p, "<think>x</think><answer>-1</answer>")
    assert wrong["correct"] == 0 and wrong["format"] == 1 and wrong["total"] < 1 and wrong["reason"] == "wrong"
    assert reward(p, "<think>x</think>")["reason"] == "no_answer"
    doubled = reward(p, reasoning_target(p) + "<answer>-1</answer>")
    assert doubled["correct"] == 0 and doubled["format"] == 0


def test_problem_document_holds_question_solution_and_tagged_answer():
    p = split_problems("equations", "worked", 1, 0)[0]
    docs = {problem_document(p, random.Random(i)) for i in range(20)}
    assert len(docs) > 2  # phrasing varies
    for doc in docs:
        assert p.prompt in doc and p.solution in doc
        assert parse_answer(doc) == p.answer


def _distinct(family: str, difficulty: dict, draws: int) -> int:
    rng = random.Random(0)
    generate = FAMILIES[family].generate
    knobs = {**FAMILIES[family].difficulty, **difficulty}
    return len({generate(rng, **knobs).id for _ in range(draws)})


@pytest.mark.parametrize("family,difficulty,draws", [
    ("arithmetic", {}, 400_000),
    ("arithmetic", {"min_digits": 1, "max_digits": 1, "ops": "+-*"}, 20_000),
    ("equations", {"max_coef": 3, "max_solution": 4, "max_offset": 5}, 20_000),
])
def test_family_size_counts_every_problem_the_generator_can_draw(family, difficulty, draws):
    # enough draws to see every problem of these small spaces: the count is exact
    size = FAMILIES[family].size(**{**FAMILIES[family].difficulty, **difficulty})
    assert size == _distinct(family, difficulty, draws)


def test_countdown_size_is_an_upper_bound():
    difficulty = {"count": 3, "max_number": 6, "max_target": 30}
    assert _distinct("countdown", difficulty, 20_000) <= FAMILIES["countdown"].size(**difficulty)


def test_split_capacity_is_the_split_share_of_the_problems():
    from dsctl.tasks.base import whole_split

    family = FAMILIES["arithmetic"]
    capacities = {split: split_capacity(family, split) for split in SPLITS}
    assert sum(capacities.values()) in range(family.size() - len(SPLITS), family.size() + 1)
    for split, capacity in capacities.items():  # within 5% of the exact count
        assert abs(capacity - len(whole_split(family, split))) / capacity < 0.05, split


def test_asking_a_split_for_more_problems_than_it_holds_is_refused_when_the_config_is_read():
    from dsctl.configs import build_config
    from dsctl.errors import UserError
    from stages.eval import EvalConfig
    from stages.grpo import GrpoStageConfig
    from stages.source import SourceConfig

    with pytest.raises(UserError, match=r"task_problems_per_family asks equations for 40,000 distinct worked "
                                        r"problems.*holds about 7,872 \(19,680 problems in all\)"):
        build_config(SourceConfig, {"task_problems_per_family": 40_000, "families": ["countdown", "equations"]},
                     "recipe.toml:3 [stages.source]")
    with pytest.raises(UserError, match=r"train_problems asks arithmetic for 8,000 distinct answer_only problems"):
        build_config(GrpoStageConfig, {"train_problems": 8_000}, "here")
    # a harder difficulty holds them; the same count is accepted
    build_config(GrpoStageConfig, {"train_problems": 8_000, "difficulty": {"arithmetic": {"max_digits": 3}}}, "here")
    with pytest.raises(UserError, match="countdown cannot list its problems"):
        build_config(EvalConfig, {"eval_problems": 0, "families": ["arithmetic", "countdown"]}, "here")
