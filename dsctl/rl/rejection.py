"""Rejection sampling (DeepSeek-R1 §2.3.3, expert iteration): sample k completions per
prompt, keep the verified-correct, well-formatted, distinct ones.

    rows, counts = sample_chunk(model, tokenizer, problems, RejectionSettings(4, 64, 0.8, 0.95), seed=0,
                                first_batch=0, source="mini_r1:grpo")
    stats = acceptance_stats(problems, rows, counts, k=4)

`filter_completions` gives every completion a verdict — accepted, or the first reason it
was not: too_long, wrong, format, duplicate, over_cap — and the stage
(stages/rejection_sample.py) only chunks, resumes and writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsctl.sampling import sample
from dsctl.tasks import Problem, reward
from dsctl.tasks.grading import check_reward_errors

REJECT_REASONS = ("wrong", "format", "too_long", "duplicate", "over_cap")


@dataclass(frozen=True)
class RejectionSettings:
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    top_p: float
    require_format: bool = True
    max_per_prompt: int = 0
    """Accepted completions kept per prompt (0 = every distinct one)."""
    max_reward_errors: float = 1.0
    """Largest share of a chunk's rewards that may fail to compute (see TaskConfig)."""


def sample_chunk(model, tokenizer, problems: Sequence[Problem], settings: RejectionSettings, seed: int,
                 first_batch: int, source: str) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Sample k completions for each problem and filter them; (accepted rows, counts by
    family and reason). One generate call per chunk, seeded by the chunk's number."""
    cfg = settings
    k = cfg.samples_per_prompt
    completions = sample(model, tokenizer, [p.prompt for p in problems], n=k, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                         batch_size=k * len(problems), first_batch=first_batch)
    rows: list[dict] = []
    counts: dict[str, dict[str, int]] = {}
    judged = [filter_completions(p, outs, cfg.require_format, cfg.max_per_prompt)
              for p, outs in zip(problems, completions)]
    check_reward_errors([score for kept in judged for _, _, score in kept], cfg.max_reward_errors, "rejection_sample")
    for p, outs, kept in zip(problems, completions, judged):
        fam = counts.setdefault(p.family, {"sampled": 0, "accepted": 0, **{r: 0 for r in REJECT_REASONS}})
        fam["sampled"] += len(outs)
        for j, (verdict, completion, score) in enumerate(kept):
            fam[verdict] += 1
            if verdict == "accepted":
                rows.append({"id": f"{p.id}-s{j}", "family": p.family, "problem_id": p.id,
                             "prompt": p.prompt, "completion": completion.text, "reward": score["total"],
                             "correct": bool(score["correct"]), "format": bool(score["format"]),
                             "tokens": completion.n_tokens, "source": source})
    return rows, counts


def filter_completions(problem, completions, require_format: bool, max_per_prompt: int):
    """[(verdict, completion, reward)] for each completion of one problem, in order.

    verdict is "accepted" or the first reason it failed: "too_long" (cut at the token
    budget before closing), "wrong" (answer does not verify), "format" (not exactly one
    think block + one answer, when required), "duplicate" (same text as an accepted one),
    "over_cap" (beyond max_per_prompt accepted)."""
    seen: set[str] = set()
    out = []
    for c in completions:
        score = reward(problem, c.text)
        if not c.finished:
            verdict = "too_long"
        elif not score["correct"]:
            verdict = "wrong"
        elif require_format and not score["format"]:
            verdict = "format"
        elif c.text.strip() in seen:
            verdict = "duplicate"
        elif max_per_prompt and len(seen) >= max_per_prompt:
            verdict = "over_cap"
        else:
            verdict = "accepted"
            seen.add(c.text.strip())
        out.append((verdict, c, score))
    return out


def acceptance_stats(problems, rows: list[dict], counts: dict[str, dict[str, int]], k: int) -> dict[str, Any]:
    """Overall and per-family acceptance: prompts with ≥1 accepted sample, acceptance
    rate (accepted / sampled), mean accepted length in tokens, and rejections by reason."""
    families: dict[str, dict[str, Any]] = {}
    for fam in sorted({p.family for p in problems}):
        c = counts.get(fam, {})
        fam_rows = [r for r in rows if r["family"] == fam]
        families[fam] = {
            "prompts": sum(p.family == fam for p in problems),
            "prompts_with_accepted": len({r["problem_id"] for r in fam_rows}),
            "acceptance_rate": round(c.get("accepted", 0) / max(c.get("sampled", 0), 1), 4),
            "mean_tokens": round(sum(r["tokens"] for r in fam_rows) / max(len(fam_rows), 1), 1),
            **{r: c.get(r, 0) for r in ("sampled", "accepted", *REJECT_REASONS)},
        }
    sampled = sum(f["sampled"] for f in families.values())
    return {
        "accepted": len(rows), "acceptance_rate": round(len(rows) / max(sampled, 1), 4),
        "prompts_with_accepted": len({r["problem_id"] for r in rows}), "prompts": len(problems),
        "sampled": sampled, "samples_per_prompt": k,
        "mean_tokens": round(sum(r["tokens"] for r in rows) / max(len(rows), 1), 1),
        **{f"rejected_{r}": sum(f[r] for f in families.values()) for r in REJECT_REASONS},
        "families": families,
    }


def flat_families(families: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The per-family numbers a stage summary shows: `<family>_acceptance_rate`, …"""
    return {f"{fam}_{key}": value for fam, stats in families.items()
            for key, value in stats.items() if key in ("acceptance_rate", "prompts_with_accepted")}


def merge_counts(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Counts by family and reason of two chunks, added."""
    out = {fam: dict(c) for fam, c in a.items()}
    for fam, c in b.items():
        target = out.setdefault(fam, {})
        for key, value in c.items():
            target[key] = target.get(key, 0) + value
    return out
