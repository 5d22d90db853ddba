"""Accuracy of a model on task problems: the one scorer behind eval and the held-out
checks sft, grpo and distill report.

`greedy_accuracy` decodes each problem once, greedily (with format rate, per-family
accuracy and decode speed); `task_accuracy` adds sampled completions:

per problem, one greedy completion and `samples` completions at (temperature, top-p);
from them, averaged over problems (overall and per family):

    greedy   greedy completion correct
    pass@1   mean correctness of the samples (DeepSeek-R1's way of reporting pass@1)
    pass@k   Chen et al.'s unbiased estimator, for each k in `pass_ks` (k ≤ samples)
    cons@n   majority vote over the parsed answers of all `samples` completions
    format   share of samples with one think block then one answer
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dsctl.eval.metrics import cons_at_k, mean, pass_at_1, pass_at_k
from dsctl.sampling import Completion, sample
from dsctl.tasks import Problem, reward
from dsctl.tasks.grading import answer_is_right, check_reward_errors, read_answer


@dataclass(frozen=True)
class SamplingSettings:
    samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 96
    batch_size: int = 64
    pass_ks: tuple[int, ...] = (1, 4)
    seed: int = 0
    max_reward_errors: float = 1.0
    """Largest share of sampled rewards that may fail to compute (see TaskConfig)."""


def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[str], n: int, *, temperature: float,
                       top_p: float, max_new_tokens: int, seed: int, batch_size: int) -> list[list[str]]:
    """`n` decoded completions per prompt (chat template, stop at eos or </answer>).

    The one place eval draws samples, kept behind this function so the sampler can change
    without touching the metrics.
    """
    out = sample(model, tokenizer, list(prompts), n=n, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)
    return [[c.text for c in row] for row in out]


@dataclass
class AccuracyResult:
    """Greedy accuracy of a model on a list of problems."""

    n: int
    accuracy: float
    """Share of problems whose last <answer> verifies."""
    format_rate: float
    """Share of completions that are exactly one think block then one answer."""
    per_family: dict[str, float]
    """Accuracy per task family."""
    mean_tokens: float
    """Mean completion length in tokens."""
    tokens_per_s: float
    """Generated tokens per second of wall time (batched greedy decoding, cache on)."""
    completions: list[Completion] = field(default_factory=list, repr=False)
    reward_errors: int = 0
    """Completions whose reward could not be computed (a failing verifier: scored wrong)."""

    def summary(self, prefix: str = "") -> dict[str, Any]:
        """Flat metrics for a stage summary, e.g. prefix="eval_" -> eval_accuracy."""
        out = {f"{prefix}accuracy": round(self.accuracy, 4), f"{prefix}format_rate": round(self.format_rate, 4),
               f"{prefix}mean_tokens": round(self.mean_tokens, 1), f"{prefix}tokens_per_s": round(self.tokens_per_s, 1),
               f"{prefix}problems": self.n}
        out.update({f"{prefix}accuracy_{fam}": round(acc, 4) for fam, acc in sorted(self.per_family.items())})
        if self.reward_errors:
            out[f"{prefix}reward_errors"] = self.reward_errors
        return out


def greedy_accuracy(model, tokenizer, problems: Sequence[Problem], *, max_new_tokens: int = 128,
                    batch_size: int = 64) -> AccuracyResult:
    """Greedy-decode every problem once and verify the answers."""
    if not problems:
        raise ValueError("greedy_accuracy needs at least one problem")
    started = time.perf_counter()
    completions = [c[0] for c in sample(model, tokenizer, [p.prompt for p in problems], n=1,
                                        max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)]
    elapsed = max(time.perf_counter() - started, 1e-9)
    scores = [reward(p, c.text) for p, c in zip(problems, completions)]
    by_family: dict[str, list[int]] = defaultdict(list)
    for p, s in zip(problems, scores):
        by_family[p.family].append(s["correct"])
    total_tokens = sum(c.n_tokens for c in completions)
    return AccuracyResult(
        n=len(problems),
        accuracy=sum(s["correct"] for s in scores) / len(problems),
        format_rate=sum(s["format"] for s in scores) / len(problems),
        per_family={f: sum(v) / len(v) for f, v in by_family.items()},
        mean_tokens=total_tokens / len(problems),
        tokens_per_s=total_tokens / elapsed,
        completions=completions, reward_errors=sum(s["reason"] == "error" for s in scores),
    )


def problem_scores(problem: Problem, greedy: str, samples: Sequence[str], pass_ks: Sequence[int],
                   verdicts: Sequence[dict[str, Any]] | None = None) -> dict[str, float]:
    """Every metric for one problem, from its greedy completion and its samples (and the
    samples' rewards, when the caller has them already)."""
    verdicts = verdicts or [reward(problem, s) for s in samples]
    correct = [bool(v["correct"]) for v in verdicts]
    answers = [read_answer(problem, s) for s in samples]
    scores = {"greedy": float(reward(problem, greedy)["correct"]), "pass@1": pass_at_1(correct)}
    for k in pass_ks:
        if k > 1:
            scores[f"pass@{k}"] = pass_at_k(len(samples), sum(correct), k)
    if ":" not in problem.grading.verifier:  # a user function reads no answer text to vote on
        scores[f"cons@{len(samples)}"] = cons_at_k(answers, lambda a: answer_is_right(problem, a), len(samples))
    scores["format"] = mean([float(v["format"]) for v in verdicts])
    return scores


def task_accuracy(model: Any, tokenizer: Any, problems: Sequence[Problem],
                  settings: SamplingSettings) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics averaged over `problems`, overall and as "<family>/<metric>", and one
    record per problem (in order): its prompt, answer, greedy completion and scores —
    for paired comparisons between checkpoints and for reading what the model wrote."""
    if any(k > settings.samples for k in settings.pass_ks):
        raise ValueError(f"pass_ks {list(settings.pass_ks)} need at least {max(settings.pass_ks)} samples; "
                         f"samples = {settings.samples}")
    prompts = [p.prompt for p in problems]
    greedy = [[c.text] for c in greedy_accuracy(model, tokenizer, problems, max_new_tokens=settings.max_new_tokens,
                                                batch_size=settings.batch_size).completions]
    sampled = sample_completions(model, tokenizer, prompts, settings.samples, temperature=settings.temperature,
                                 top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
                                 seed=settings.seed + 1, batch_size=settings.batch_size)
    verdicts = [[reward(p, text) for text in texts] for p, texts in zip(problems, sampled)]
    check_reward_errors([v for row in verdicts for v in row], settings.max_reward_errors, "eval")
    per_problem = [problem_scores(p, g[0], s, settings.pass_ks, v)
                   for p, g, s, v in zip(problems, greedy, sampled, verdicts)]
    records = [{"prompt": p.prompt, "answer": p.answer, "greedy_text": g[0], **scores}
               for p, g, scores in zip(problems, greedy, per_problem)]
    by_family: dict[str, list[dict[str, float]]] = defaultdict(list)
    for p, scores in zip(problems, per_problem):
        by_family[p.family].append(scores)
    names = list(per_problem[0])
    result = {name: round(mean([s[name] for s in per_problem]), 4) for name in names}
    if len(by_family) > 1:
        for family, rows in by_family.items():
            result.update({f"{family}/{name}": round(mean([s[name] for s in rows]), 4) for name in names})
    return result, records


def paired_comparisons(per_problem: dict[str, list[dict[str, Any]]],
                       names: Sequence[str] = ("greedy", "pass@1"),
                       pairs: Sequence[Sequence[str]] = ()) -> list[dict[str, Any]]:
    """Checkpoint `after` against `before` on the same problems, for each (before, after)
    of `pairs` (default: each checkpoint against the one before it, in the given order):
    the mean difference of each metric in `names` with its paired standard error."""
    from dsctl.eval.metrics import paired_difference

    labels = list(per_problem)
    for pair in pairs:
        unknown = [x for x in pair if x not in per_problem]
        if len(pair) != 2 or unknown:
            raise ValueError(f"comparison {list(pair)} must name two of the checkpoints {labels}")
    rows = []
    for before, after in pairs or list(zip(labels, labels[1:])):
        for name in names:
            a = [s[name] for s in per_problem[before]]
            b = [s[name] for s in per_problem[after]]
            diff, se = paired_difference(a, b)
            rows.append({"from": before, "to": after, "metric": name, "difference": round(diff, 4),
                         "stderr": round(se, 4), "problems": len(a)})
    return rows
