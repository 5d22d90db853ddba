"""grpo: reinforcement learning with verifiable rewards (GRPO, DeepSeekMath / DeepSeek-R1).

Reads a `checkpoint` (normally the sft stage's), writes a `checkpoint`. Each step samples
`prompts_per_step` of `train_problems` problems from the task families' answer_only split, draws `group_size`
completions per prompt with the MLA-cached sampler, rewards them by rule (the answer
verified; a format bonus only if asked), centers rewards within each group into
advantages (Dr. GRPO; optionally std-scaled), and takes `update_epochs`
clipped-surrogate steps with a k3 KL penalty to the frozen input checkpoint. The summary
holds greedy held-out (dev split) accuracy before and after, and completions.jsonl some
steps' sampled completions with their rewards. Resumes exactly after a kill.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any, ClassVar

from dsctl.configs import stage_defaults
from dsctl.pipeline.stage import PROBLEMS_INPUT, Input, StageContext, StageSpec
from dsctl.rl.config import GRPOConfig
from dsctl.tasks.config import EvalSplitConfig, TaskConfig, TrainSplitConfig


@dataclass
@stage_defaults(train_problems=4000)
class GrpoStageConfig(TaskConfig, TrainSplitConfig, EvalSplitConfig, GRPOConfig):
    """GRPO on task problems (the families', or a `problems` input's). The prompt pool
    needs only verifiable answers, so it comes from the answer_only split, whose worked
    solutions appear nowhere in training, and it can be far larger than sft's set
    (2-digit + and − have ~4,900 answer-only problems).
    GRPO needs groups that disagree: a difficulty the sft model solves sometimes, not never."""

    train_split: ClassVar[str] = "answer_only"

    def __post_init__(self) -> None:
        # FamiliesConfig's check does not call super(), so GRPOConfig's would never run
        TaskConfig.__post_init__(self)
        GRPOConfig.__post_init__(self)


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from dsctl.eval.task_accuracy import greedy_accuracy
    from dsctl.rl.trainer import GRPOTrainer
    from dsctl.tasks.config import eval_draw, train_draw
    from dsctl.tasks.problem_set import ProblemSet, fit_context
    from dsctl.tokenizer import load_tokenizer
    from dsctl.train.artifacts import export_checkpoint, load_model, tokenizer_dir
    from dsctl.train.checkpoint import latest_checkpoint

    cfg: GrpoStageConfig = ctx.config
    source = ctx.input("checkpoint")
    tok_dir = tokenizer_dir(source)
    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(ctx.seed)
    policy, reference = load_model(source), load_model(source)
    problem_set = ProblemSet.of(ctx.maybe_input("problems"))
    context = policy.config.max_position_embeddings
    pool, too_long = fit_context(train_draw(cfg, ctx.seed, problem_set), tokenizer, context, cfg.max_new_tokens)
    held_out, too_long_held_out = fit_context(eval_draw(cfg, problem_set), tokenizer, context, cfg.max_new_tokens)
    if too_long or too_long_held_out:
        ctx.warn(f"{too_long + too_long_held_out} prompts left out: with max_new_tokens={cfg.max_new_tokens} "
                 f"they do not fit the model's {context}-token context")
    ctx.info(f"{len(pool)} train problems, {len(held_out)} held-out; G={cfg.group_size}, "
             f"{cfg.prompts_per_step} prompts/step, {cfg.max_steps} steps")

    trainer = GRPOTrainer(policy, reference, tokenizer, pool, cfg, ctx, seed=ctx.seed,
                          max_reward_errors=cfg.max_reward_errors)
    state = ctx.load_state()
    if "before" not in state:  # measured once, so a resumed run reports the same baseline
        state["before"] = greedy_accuracy(trainer.model, tokenizer, held_out,
                                          max_new_tokens=cfg.max_new_tokens).summary("before_")
        ctx.save_state(state)
    summary = trainer.fit()
    after = greedy_accuracy(trainer.model, tokenizer, held_out, max_new_tokens=cfg.max_new_tokens)
    result = {"eval_accuracy": round(after.accuracy, 4), **state["before"], **after.summary("after_"), **summary,
              "prompts_too_long": too_long + too_long_held_out}
    ctx.info(f"held-out accuracy {state['before']['before_accuracy']:.3f} -> {after.accuracy:.3f}")
    if trainer.completions_path.is_file():  # what the policy wrote, for `dsctl show`
        shutil.copyfile(trainer.completions_path, ctx.out / "completions.jsonl")
    export_checkpoint(trainer.model, ctx.out, tok_dir, latest_checkpoint(trainer.ckpt_dir))
    return result


STAGE = StageSpec(
    name="grpo",
    version=2,
    config=GrpoStageConfig,
    run=run,
    output="checkpoint",
    inputs={"checkpoint": Input("checkpoint", help="the policy to improve, normally from `sft`"),
            "problems": PROBLEMS_INPUT},
    help="Group Relative Policy Optimization on the verifiable reasoning tasks: G sampled "
         "completions per prompt, rule-based rewards, group-relative advantages, clipped "
         "ratio and k3 KL to the input checkpoint. Reports held-out greedy accuracy before/after.",
    example="dsctl grpo --from mini_r1:sft --set group_size=8 --set max_steps=20",
)
