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
from dsctl.pipeline.stage import PROBLEMS_INPUT, Input, StageContext, StageSpec
from dsctl.tasks.config import SamplingConfig, TaskConfig, TrainSplitConfig
from dsctl.train.config import ComputeConfig


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
    from dsctl.rl.rejection import RejectionSettings, acceptance_stats, flat_families, merge_counts, sample_chunk
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
    settings = RejectionSettings(cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                 cfg.require_format, cfg.max_per_prompt, cfg.max_reward_errors)
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
            rows, counts = sample_chunk(model, tokenizer, problems[c * chunk:(c + 1) * chunk], settings, ctx.seed,
                                        first_batch=c, source=source.label or source.key)
            with open(partial, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            state = {"chunks_done": c + 1, "rows": state["rows"] + len(rows),
                     "counts": merge_counts(state["counts"], counts)}
            ctx.save_state(state)
            bar.advance(1, accepted=state["rows"])
    rows = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    stats = acceptance_stats(problems, rows, state["counts"], cfg.samples_per_prompt)
    (ctx.out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ctx.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    ctx.info(f"accepted {stats['accepted']} of {stats['sampled']} samples "
             f"({stats['acceptance_rate']:.1%}); {stats['prompts_with_accepted']}/{len(problems)} prompts covered")
    return ({k: v for k, v in stats.items() if not isinstance(v, dict)} | flat_families(stats["families"])
            | {"prompts_too_long": too_long})


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
