"""rejection-sample: sample k completions per prompt, keep the verified-correct ones.

Reads a `checkpoint`; writes a `samples` artifact: samples.jsonl (one accepted completion
per line: id, family, problem_id, prompt, completion, reward, correct, format, tokens,
source) and stats.json (accepted/rejected counts by reason, and per family: prompts with
at least one accepted sample, acceptance rate, mean accepted length). This is how R1 made
its reasoning SFT data: sample from the RL checkpoint, keep what a verifier accepts.

Resumable: prompts are processed in chunks; after each chunk its accepted rows are
appended and the progress recorded with `ctx.save_state`, and sampling seeds depend only
on the chunk's position, so an interrupted run finishes with exactly the samples of an
uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from dsctl.configs import stage_defaults
from dsctl.stage import PROBLEMS_INPUT, Input, StageContext, StageSpec
from dsctl.tasks.config import SamplingConfig, TaskConfig, TrainSplitConfig
from dsctl.train.config import ComputeConfig

REJECT_REASONS = ("wrong", "format", "too_long", "duplicate", "over_cap")


@dataclass
@stage_defaults(
    train_problems=192,
    temperature=0.8,  # 0 would make all k samples identical
    top_p=0.95,
)
class RejectionSampleConfig(TaskConfig, TrainSplitConfig, SamplingConfig, ComputeConfig):
    samples_per_prompt: int = 4
    """k: completions drawn per prompt."""
    max_per_prompt: int = 0
    """m: keep at most this many accepted completions per prompt (0 = all distinct ones)."""
    require_format: bool = True
    """Keep only completions that are exactly one <think> block then one <answer>."""
    prompts_per_chunk: int = 32
    """Prompts sampled between two progress saves (k × this sequences per generate call)."""
    problem_seed_offset: int = 1
    """Added to the run seed to pick the prompts from the answer_only split, so by default
    they are another draw than grpo's pool (0 = the same draw: grpo's own prompts). A
    problem set's draw is its first `train_problems`, whatever the seed."""

    train_split: ClassVar[str] = "answer_only"


def run(ctx: StageContext) -> dict[str, Any]:
    from dsctl.tasks.config import train_draw
    from dsctl.tasks.problem_set import ProblemSet, fit_context
    from dsctl.tokenizer import load_tokenizer
    from dsctl.train.artifacts import load_model, tokenizer_dir
    from dsctl.train.loop import use_compute

    cfg: RejectionSampleConfig = ctx.config
    device = use_compute(cfg)
    source = ctx.input("checkpoint")
    tokenizer = load_tokenizer(tokenizer_dir(source))
    model = load_model(source).to(device)
    problem_set = ProblemSet.of(ctx.maybe_input("problems"))
    problems, too_long = fit_context(train_draw(cfg, ctx.seed + cfg.problem_seed_offset, problem_set), tokenizer,
                                     model.config.max_position_embeddings, cfg.max_new_tokens)
    if too_long:
        ctx.warn(f"{too_long} prompts left out: they do not fit the model's context "
                 f"with max_new_tokens={cfg.max_new_tokens}")
    partial = ctx.scratch / "samples.partial.jsonl"
    state = ctx.load_state()
    chunk = max(1, cfg.prompts_per_chunk)
    n_chunks = -(-len(problems) // chunk)
    done = state.get("chunks_done", 0)
    if done == 0:
        state = {"chunks_done": 0, "rows": 0, "counts": {}}
    _truncate_lines(partial, state["rows"])  # rows of a chunk whose save never landed
    with ctx.progress(n_chunks, "sample", unit="chunk", completed=done) as bar:
        for c in range(done, n_chunks):
            rows, counts = sample_chunk(model, tokenizer, problems[c * chunk:(c + 1) * chunk], cfg, ctx.seed,
                                        first_batch=c, source=source.label or source.key)
            with open(partial, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            state = {"chunks_done": c + 1, "rows": state["rows"] + len(rows),
                     "counts": _merge(state["counts"], counts)}
            ctx.save_state(state)
            bar.advance(1, accepted=state["rows"])
    rows = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    stats = acceptance_stats(problems, rows, state["counts"], cfg.samples_per_prompt)
    (ctx.out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    ctx.info(f"accepted {stats['accepted']} of {stats['sampled']} samples "
             f"({stats['acceptance_rate']:.1%}); {stats['prompts_with_accepted']}/{len(problems)} prompts covered")
    return ({k: v for k, v in stats.items() if not isinstance(v, dict)} | _flat_families(stats["families"])
            | {"prompts_too_long": too_long})


def sample_chunk(model, tokenizer, problems, cfg: RejectionSampleConfig, seed: int, first_batch: int,
                 source: str) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Sample k completions for each problem and filter them; (accepted rows, counts by
    family and reason). One generate call per chunk, seeded by the chunk's number."""
    from dsctl.sampling import sample
    from dsctl.tasks.grading import check_reward_errors

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
    from dsctl.tasks import reward

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


def _flat_families(families: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{fam}_{key}": value for fam, stats in families.items()
            for key, value in stats.items() if key in ("acceptance_rate", "prompts_with_accepted")}


def _merge(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {fam: dict(c) for fam, c in a.items()}
    for fam, c in b.items():
        target = out.setdefault(fam, {})
        for key, value in c.items():
            target[key] = target.get(key, 0) + value
    return out


def _truncate_lines(path, keep: int) -> None:
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) != keep:
        path.write_text("".join(lines[:keep]))


STAGE = StageSpec(
    name="rejection_sample",
    version=1,
    config=RejectionSampleConfig,
    run=run,
    output="samples",
    inputs={"checkpoint": Input("checkpoint", help="the model to sample from (e.g. the GRPO checkpoint)"),
            "problems": PROBLEMS_INPUT},
    help="Rejection sampling: draw k completions per training prompt, keep the verified-correct, "
         "well-formatted, distinct ones; writes samples.jsonl with acceptance statistics per family.",
    example="dsctl rejection_sample --from mini_r1:grpo --set samples_per_prompt=8",
)
