"""Sampling metrics for verifiable tasks: pass@1, unbiased pass@k, majority-vote cons@k.

For a problem sampled n times with c correct completions:

* pass@1 is the mean correctness over the n samples (DeepSeek-R1 reports it this way,
  at temperature 0.6 / top-p 0.95, because greedy decoding of a reasoning model is
  brittle);
* pass@k is Chen et al. (2021)'s unbiased estimator 1 − C(n−c, k) / C(n, k): the chance
  that at least one of k samples drawn without replacement from the n is correct;
* cons@k takes the most frequent parsed answer of the first k samples and scores it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` of `n` samples correct (k ≤ n).

    Computed as 1 − Π_{i=n−c+1..n} (1 − k/i), the numerically stable product form of
    1 − C(n−c, k)/C(n, k) that needs no big binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; ties go to the answer that appeared first.

    Unparseable samples (None) cast no vote. First-appearance tie-breaking makes the
    vote deterministic and is what you get by reading samples in the order drawn.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def cons_at_k(answers: Sequence[str | None], is_correct: Callable[[str], bool], k: int) -> float:
    """1.0 when the majority answer of the first k samples is correct, else 0.0."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"cons@{k} needs at least {k} samples, got {len(answers)}")
    vote = majority_answer(answers[:k])
    return float(vote is not None and is_correct(vote))


def pass_at_1(correct: Sequence[bool]) -> float:
    """Mean correctness over one problem's samples."""
    if not correct:
        raise ValueError("pass@1 needs at least one sample")
    return float(sum(bool(c) for c in correct) / len(correct))


def paired_difference(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """Mean of after − before over the same problems, and its standard error.

    Two checkpoints scored on the same problems differ less by chance than two
    independent samples would: the paired SE, std(differences) / sqrt(n), is what tells a
    real gain from problem-sampling noise (a gain under ~2 SE is not established).
    """
    if len(before) != len(after) or not before:
        raise ValueError("paired_difference needs two equally long, non-empty lists; "
                         f"got {len(before)} and {len(after)}")
    diffs = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return float(diffs.mean()), se


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
