"""eval: compare checkpoints on held-out tasks, perplexity, passkey retrieval and multiple choice.

Reads several `checkpoint`s (labelled by how they were named: "mini_r1:sft" -> "sft"),
optionally `shards` for validation perplexity, and writes a `report`: report.json
(checkpoint -> metric -> value, plus the settings), report.md, a rich table on the
console and report.png (one bar panel per metric).

Task metrics are on the test split of each family, or of a `problems` input (never
trained on, by construction, and the same problems at every run seed):
greedy accuracy; pass@1 as the mean over `samples` completions at temperature 0.6 /
top-p 0.95 (DeepSeek-R1's protocol); unbiased pass@k; majority-vote cons@k.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dsctl.configs import stage_defaults
from dsctl.errors import UserError
from dsctl.pipeline.stage import PROBLEMS_INPUT, Input, StageContext, StageSpec
from dsctl.tasks.config import EvalSplitConfig, PasskeyConfig, SamplingConfig, TaskConfig
from dsctl.train.config import BatchConfig, ComputeConfig


@dataclass
@stage_defaults(eval_problems=400, batch_size=256)
class EvalConfig(TaskConfig, EvalSplitConfig, SamplingConfig, PasskeyConfig, BatchConfig, ComputeConfig):
    samples: int = 8
    """Sampled completions per problem for pass@1 / pass@k / cons@k (greedy is one more)."""

    eval_split: ClassVar[str] = "test"
    pass_ks: list[int] = field(default_factory=lambda: [1, 8])
    """k values for unbiased pass@k (each ≤ samples); pass@1 is always reported."""
    compare: list[list[str]] = field(default_factory=list)
    """Checkpoint pairs [before, after] (by label, e.g. ["sft", "grpo"]) whose paired
    differences the report gives; [] = each checkpoint against the one listed before it."""
    ppl_seq_len: int = 256
    """Window length for validation perplexity (needs a shards input)."""
    ppl_batches: int = 4
    """Validation batches of 8 windows for perplexity."""
    passkey_lengths: list[int] = field(default_factory=list)
    """Context lengths (tokens) for passkey retrieval; [] skips it."""
    mc_file: str = ""
    """A multiple-choice JSONL file (question, choices, answer); "" skips it."""
    mc_max_length: int = 1024
    """Longest context+choice scored; longer inputs keep their last tokens (as lm-eval does)."""


def run(ctx: StageContext) -> dict[str, Any]:
    from dsctl.eval.report import comparison_line, rich_table, write_report
    from dsctl.eval.task_accuracy import paired_comparisons
    from dsctl.train.loop import use_compute

    cfg: EvalConfig = ctx.config
    use_compute(cfg)
    checkpoints = ctx.inputs_of("checkpoint")
    labels = checkpoint_labels(checkpoints)
    for pair in cfg.compare:  # checked before minutes of decoding, not after
        if len(pair) != 2 or not set(pair) <= set(labels):
            raise UserError(f"eval.compare: {pair} must name two of the checkpoints {labels}")
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}
    with ctx.progress(len(checkpoints), "checkpoints", unit="ckpt") as bar:
        for label, artifact in zip(labels, checkpoints):
            metrics[label], details[label] = evaluate_checkpoint(ctx, artifact, label)
            ctx.log(checkpoint=label, **metrics[label])
            bar.advance(1)
    comparisons = paired_comparisons({label: d["task_scores"] for label, d in details.items() if "task_scores" in d},
                                     pairs=cfg.compare)
    settings = {**asdict(cfg), "seed": ctx.seed,
                "checkpoints": {lb: {"ref": a.label, "key": a.key} for lb, a in zip(labels, checkpoints)}}
    write_report(ctx.out, metrics, settings, details, title=ctx.label, comparisons=comparisons)
    if not ctx.reporter.quiet:
        ctx.reporter.console.print(rich_table(metrics, title=ctx.label))
    for row in comparisons:
        ctx.info(comparison_line(row))
    return {**headline(metrics), **{f"{r['to']}-{r['from']}.{r['metric']}": r["difference"] for r in comparisons}}


def evaluate_checkpoint(ctx: StageContext, artifact: Any, label: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Every configured metric for one checkpoint."""
    from dsctl.eval.task_accuracy import SamplingSettings, task_accuracy
    from dsctl.tasks.config import eval_draw
    from dsctl.tasks.problem_set import ProblemSet, fit_context
    from dsctl.tokenizer import load_tokenizer
    from dsctl.train.artifacts import load_model, tokenizer_dir
    from dsctl.train.loop import resolve_device

    cfg: EvalConfig = ctx.config
    model = load_model(artifact).eval().to(resolve_device(cfg.device))
    tokenizer = load_tokenizer(tokenizer_dir(artifact))
    metrics: dict[str, float] = {"params": model.num_parameters()[0]}
    details: dict[str, Any] = {}
    problem_set = ProblemSet.of(ctx.maybe_input("problems"))
    if cfg.families or problem_set is not None:
        problems, too_long = fit_context(eval_draw(cfg, problem_set), tokenizer, model.config.max_position_embeddings,
                                         cfg.max_new_tokens)
        if too_long:
            ctx.warn(f"{label}: {too_long} test prompts left out: they do not fit the model's context "
                     f"with max_new_tokens={cfg.max_new_tokens}")
            metrics["prompts_too_long"] = too_long
        settings = SamplingSettings(cfg.samples, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.batch_size,
                                    tuple(cfg.pass_ks), ctx.seed, cfg.max_reward_errors)
        scores, details["task_scores"] = task_accuracy(model, tokenizer, problems, settings)
        metrics.update(scores)
    shards = ctx.maybe_input("shards")
    if shards is not None:
        from dsctl.eval.perplexity import validation_perplexity

        _same_tokenizer(artifact, shards)
        metrics.update(validation_perplexity(model, shards.path, tokenizer.eos_id, cfg.ppl_seq_len, 8, cfg.ppl_batches))
    for length in cfg.passkey_lengths:
        from dsctl.eval.passkey import passkey_accuracy

        result = passkey_accuracy(model, tokenizer, length, cfg.passkey_trials, seed=ctx.seed)
        metrics[f"passkey@{length}"] = round(result["accuracy"], 4)
        details[f"passkey@{length}"] = result
    if cfg.mc_file:
        from dsctl.eval.multiple_choice import load_choice_questions, score_multiple_choice

        mc = score_multiple_choice(model, tokenizer, load_choice_questions(Path(cfg.mc_file)), cfg.mc_max_length)
        metrics.update({"mc_acc": round(mc["acc"], 4), "mc_acc_norm": round(mc["acc_norm"], 4)})
        details["multiple_choice"] = mc["per_question"]
    ctx.info(f"{label}: " + ", ".join(f"{k} {v:g}" for k, v in metrics.items() if "/" not in k))
    return metrics, details


def checkpoint_labels(artifacts: list[Any]) -> list[str]:
    """Short unique labels: "mini_r1:sft" -> "sft"; a directory -> the stage that made it
    (from its manifest) or its name; a bare key -> its first 12 characters. A label used
    twice gets the key prefix appended."""
    def short(a: Any) -> str:
        ref = a.label or a.key[:12]
        if Path(ref).exists():
            return a.manifest.get("stage") or Path(ref).name
        return ref.rsplit(":", 1)[-1]

    names = [short(a) for a in artifacts]
    return [f"{n}@{a.key[:8]}" if names.count(n) > 1 else n for n, a in zip(names, artifacts)]


def headline(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Summary metrics for the manifest: each checkpoint's top-level numbers, flattened."""
    return {f"{label}.{name}": value for label, values in metrics.items()
            for name, value in values.items() if "/" not in name}


def _same_tokenizer(checkpoint: Any, shards: Any) -> None:
    from dsctl.tokenizer import vocabulary_file
    from dsctl.train.artifacts import tokenizer_dir

    a, b = (hashlib.sha256(vocabulary_file(tokenizer_dir(x)).read_bytes()).hexdigest() for x in (checkpoint, shards))
    if a != b:
        raise UserError(f"{checkpoint.label} and {shards.label} use different tokenizers; "
                        "perplexity needs shards made with the checkpoint's tokenizer")


def fingerprint(cfg: EvalConfig) -> dict[str, Any]:
    """The multiple-choice file's contents, which the config only names."""
    if not cfg.mc_file:
        return {}
    path = Path(cfg.mc_file)
    if not path.is_file():
        return {"mc_file": "missing"}
    return {"mc_file": hashlib.sha256(path.read_bytes()).hexdigest()}


STAGE = StageSpec(
    name="eval",
    version=1,
    config=EvalConfig,
    run=run,
    output="report",
    inputs={"checkpoint": Input("checkpoint", many=True, help="checkpoints to compare"),
            "shards": Input("shards", optional=True, help="held-out token shards for perplexity"),
            "problems": PROBLEMS_INPUT},
    help="Compare checkpoints: task accuracy (greedy, pass@1, pass@k, cons@k) on held-out problems, "
         "validation perplexity, passkey retrieval and multiple-choice log-likelihood; writes report.json/.md/.png.",
    fingerprint=fingerprint,
    example="dsctl eval --from mini_r1:sft --from mini_r1:grpo --set samples=8 --set 'pass_ks=[1,8]'",
)
