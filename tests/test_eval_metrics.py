"""pass@k (unbiased), pass@1 and cons@k majority vote."""

from itertools import combinations
from math import comb

import pytest

from dsctl.eval.metrics import cons_at_k, majority_answer, pass_at_1, pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),                          # nothing correct
    (5, 5, 3, 1.0),                          # everything correct
    (4, 1, 2, 1 - comb(3, 2) / comb(4, 2)),  # 1 - 3/6 = 0.5
    (10, 3, 5, 1 - comb(7, 5) / comb(10, 5)),  # 1 - 21/252
    (3, 1, 3, 1.0),                          # n - c < k: every subset has the correct one
    (8, 2, 1, 0.25),                         # pass@1 = c / n
])
def test_pass_at_k_matches_hand_computed_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_share_of_k_subsets_with_a_correct_sample():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(combinations(samples, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)


def test_pass_at_1_is_mean_correctness():
    assert pass_at_1([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        pass_at_1([])


def test_majority_answer_breaks_ties_by_first_appearance_and_ignores_unparsed():
    assert majority_answer(["3", "4", "4", "3", "5"]) == "3"  # 2–2 tie: "3" came first
    assert majority_answer(["4", "3", "3", "4"]) == "4"
    assert majority_answer([None, None, "7"]) == "7"      # None casts no vote
    assert majority_answer([None, None]) is None


def test_cons_at_k_scores_the_majority_of_the_first_k_samples():
    answers = ["12", "11", "12", "11", "11"]
    is_right = lambda a: a == "12"  # noqa: E731
    assert cons_at_k(answers, is_right, 3) == 1.0   # 12 twice among the first 3
    assert cons_at_k(answers, is_right, 5) == 0.0   # 11 wins 3–2 over all 5
    assert cons_at_k(answers, is_right, 4) == 1.0   # 2–2 tie: 12 appeared first
    assert cons_at_k([None, None], is_right, 2) == 0.0
    with pytest.raises(ValueError):
        cons_at_k(answers, is_right, 6)


def test_problem_scores_combine_greedy_samples_and_votes():
    from dsctl.eval.task_accuracy import problem_scores
    from dsctl.tasks import split_problems

    p = split_problems("arithmetic", "test", 1, seed=0)[0]
    wrong = str(int(p.answer) + 1)
    right = f"<think>work</think><answer>{p.answer}</answer>"
    samples = [f"<think>x</think><answer>{wrong}</answer>", right, f"<answer>{p.answer}</answer>",
               f"<think>y</think><answer>{wrong}</answer>", "no answer at all"]
    scores = problem_scores(p, right, samples, pass_ks=(1, 2, 5))
    assert scores["greedy"] == 1.0
    assert scores["pass@1"] == pytest.approx(2 / 5)
    assert scores["pass@2"] == pytest.approx(1 - comb(3, 2) / comb(5, 2))
    assert scores["pass@5"] == 1.0
    assert scores["cons@5"] == 0.0  # the wrong answer came first in a 2–2 tie
    assert scores["format"] == pytest.approx(3 / 5)  # think + answer, nothing else


def test_paired_difference_is_the_mean_gain_with_the_paired_standard_error():
    from dsctl.eval.metrics import paired_difference

    before, after = [0, 0, 1, 0, 1, 0], [1, 0, 1, 1, 1, 0]
    diff, se = paired_difference(before, after)
    diffs = [1, 0, 0, 1, 0, 0]
    mu = sum(diffs) / 6
    assert diff == pytest.approx(mu)
    assert se == pytest.approx((sum((d - mu) ** 2 for d in diffs) / 5) ** 0.5 / 6 ** 0.5)
    # a constant shift on every problem is certain: zero standard error
    assert paired_difference([0.1, 0.2, 0.3], [0.2, 0.3, 0.4]) == (pytest.approx(0.1), pytest.approx(0.0))
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 0.0])
