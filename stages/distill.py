"""distill: train a smaller student on the teacher's rejection samples (as R1's distilled
models were made), optionally with a logit-distillation term.

Inputs (explicit slots, so a recipe can say `from = {samples = "rejection_sample",
teacher = "grpo"}`): `samples` (accepted completions), `teacher` (a checkpoint: the
tokenizer for a fresh student, the KL term's targets, and the accuracy/speed baseline),
and optionally `student` (a checkpoint to start the student from instead of a fresh
init). Writes the student `checkpoint`.

Where the student starts: R1 distilled into pretrained Qwen and Llama bases, not into
random weights. With no `student` checkpoint, `student_layers` builds one from the
teacher itself, DistilBERT-style (Sanh et al. 2019): the embeddings, the output head,
the final norm, the MTP modules and the named decoder layers are copied, so the student
starts as a shallower teacher and the samples teach it to do with fewer layers what the
teacher does. `student_layers = []` trains a fresh `student` preset from random weights.

Loss = SFT cross-entropy on the completion tokens
     + kl_weight · T² · KL(teacher_T ∥ student_T) on the same positions,
where _T are next-token distributions softened at temperature T. The KL term needs the
two models to share a tokenizer; if their tokenizer files differ it is switched off with
a warning (or an error, by config) and training is plain SFT on the samples' text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dsctl.configs import stage_defaults
from dsctl.errors import UserError
from dsctl.pipeline.stage import PROBLEMS_INPUT, Input, StageContext, StageSpec
from dsctl.tasks.config import CompletionConfig, EvalSplitConfig, TaskConfig, TrainSplitConfig
from dsctl.train.config import ExamplesConfig, LMTrainConfig


@dataclass
@stage_defaults(max_steps=200, lr=2e-3, warmup_steps=10, eval_batches=4, train_problems=0)
class DistillConfig(TaskConfig, TrainSplitConfig, EvalSplitConfig, CompletionConfig, ExamplesConfig, LMTrainConfig):
    student_layers: list[int] = field(default_factory=list)
    """Teacher decoder layers (0-based, in order) the student is built from, e.g. [0, 3]:
    a shallower copy of the teacher (see the module docstring). [] = a fresh student from
    `student` and `student_overrides`. Ignored when a `student` checkpoint is given."""
    student: str = "small"
    """Model preset of a fresh student (used when `student_layers` is [])."""
    student_overrides: dict[str, Any] = field(default_factory=lambda: {
        "hidden_size": 128, "num_hidden_layers": 2, "n_routed_experts": 8})
    """DeepseekV3Config keys replacing the preset's (a fresh student), or the teacher's (a
    student from `student_layers`: keys that keep every copied shape, e.g.
    {num_nextn_predict_layers = 0} to drop the MTP module)."""
    kl_weight: float = 0.5
    """Weight of the logit-distillation KL term (0 = pure SFT on the samples)."""
    kl_temperature: float = 2.0
    """T: both distributions are softened at T; the term is scaled by T²."""
    on_tokenizer_mismatch: Literal["warn", "error"] = "warn"
    """Teacher and student tokenizers differ: warn and train without the KL term, or stop."""


def run(ctx: StageContext) -> dict[str, Any]:
    from dsctl.tasks.problem_set import ProblemSet
    from dsctl.tokenizer import load_tokenizer
    from dsctl.train.artifacts import export_checkpoint, load_model, tokenizer_dir
    from dsctl.train.batches import PackedExamples
    from dsctl.train.checkpoint import latest_checkpoint
    from dsctl.train.distill import make_distill_loss, tokenizer_differences, validation_kl
    from dsctl.train.examples import split_validation
    from dsctl.train.loop import LMTrainer, resolve_device

    cfg: DistillConfig = ctx.config
    teacher_art, student_art = ctx.input("teacher"), ctx.maybe_input("student")
    tok_dir = tokenizer_dir(student_art or teacher_art)
    tokenizer = load_tokenizer(tok_dir)
    teacher = load_model(teacher_art)
    differences = tokenizer_differences(teacher_art, student_art, teacher)
    if differences and cfg.kl_weight > 0:
        _refuse_or_warn(ctx, teacher_art, student_art, differences)
    use_kl = cfg.kl_weight > 0 and not differences

    problem_set = ProblemSet.of(ctx.maybe_input("problems"))
    examples, counts = _examples(ctx, tokenizer, problem_set)
    train, val = split_validation(examples, cfg.val_fraction, ctx.seed)
    ctx.info(f"{len(train)} training / {len(val)} validation examples; KL term {'on' if use_kl else 'off'}")
    student = _student(ctx, teacher, student_art)
    teacher.to(resolve_device(cfg.device)).eval().requires_grad_(False)
    loss_fn = make_distill_loss(teacher if use_kl else None, cfg.kl_weight, cfg.kl_temperature, cfg.doc_masking)
    batches = PackedExamples(train, cfg.seq_len, cfg.batch_size, tokenizer.pad_id, ctx.seed, grad_accum=cfg.grad_accum)
    val_batches = PackedExamples(val, cfg.seq_len, cfg.batch_size, tokenizer.pad_id, ctx.seed, shuffle=False)
    trainer = LMTrainer(student, batches, cfg, ctx, val_batches=val_batches, loss_fn=loss_fn)
    fit = trainer.fit()
    summary = _compare(ctx, trainer.model, teacher, tokenizer, problem_set) if cfg.eval_problems else {}
    if not differences:  # the KL is only defined over one vocabulary
        summary["val_kl_teacher_student"] = round(validation_kl(trainer.model, teacher, val_batches, cfg.eval_batches,
                                                                trainer.device, cfg.doc_masking), 5)
    summary.update(fit)
    summary.update(kl_used=use_kl, train_examples=len(train), val_examples=len(val), **counts,
                   student_params=trainer.model.num_parameters()[0], teacher_params=teacher.num_parameters()[0])
    export_checkpoint(trainer.model.cpu(), ctx.out, tok_dir, latest_checkpoint(trainer.ckpt_dir))
    return summary


def _examples(ctx: StageContext, tokenizer: Any, problem_set: Any) -> tuple[list, dict[str, Any]]:
    """What the student learns from: the teacher's samples, and optionally worked solutions."""
    from dsctl.tasks.config import train_draw
    from dsctl.train.examples import RowStats, artifact_conversations, encode_conversations, task_conversations

    cfg: DistillConfig = ctx.config
    stats = RowStats()
    convs = artifact_conversations(ctx.input("samples").path, stats)
    counts = {"sample_examples": len(convs), "malformed_rows": stats.malformed}
    if cfg.train_problems:
        convs += task_conversations(train_draw(cfg, ctx.seed, problem_set))
    counts["task_examples"] = len(convs) - counts["sample_examples"]
    counts["teacher_sample_share"] = round(counts["sample_examples"] / max(len(convs), 1), 4)
    examples, counts["too_long"] = encode_conversations(tokenizer, convs, cfg.seq_len)
    if not examples:
        raise UserError(f"distill: {ctx.input('samples').label} has no usable samples "
                        "(was anything accepted by rejection_sample?)")
    return examples, counts


def _student(ctx: StageContext, teacher: Any, student_art: Any) -> Any:
    """The student: a given checkpoint, the teacher's `student_layers`, or a fresh preset."""
    import torch

    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.train.artifacts import load_model
    from dsctl.train.distill import student_from_layers

    cfg: DistillConfig = ctx.config
    if student_art is not None:
        return load_model(student_art)
    torch.manual_seed(ctx.seed)
    if cfg.student_layers:
        student = student_from_layers(teacher, cfg.student_layers, cfg.student_overrides)
        what = f"student from teacher layers {cfg.student_layers}"
    else:
        # the teacher's vocabulary, which an imported model pads past its tokenizer's
        student = DeepSeekV3(ModelConfig.preset(cfg.student, **{"vocab_size": teacher.config.vocab_size,
                                                                 **cfg.student_overrides}))
        what = f"fresh student {cfg.student} {cfg.student_overrides}"
    ctx.info(f"{what}: {student.num_parameters()[0] / 1e6:.2f}M parameters "
             f"(teacher {teacher.num_parameters()[0] / 1e6:.2f}M)")
    return student


def _compare(ctx: StageContext, student: Any, teacher: Any, tokenizer: Any, problem_set: Any) -> dict[str, Any]:
    """Greedy accuracy and decode speed of student and teacher on the same held-out problems."""
    from dsctl.eval.task_accuracy import greedy_accuracy
    from dsctl.tasks.config import eval_draw

    cfg: DistillConfig = ctx.config
    problems = eval_draw(cfg, problem_set)
    summary: dict[str, Any] = {}
    for name, model in (("student", student), ("teacher", teacher)):
        result = greedy_accuracy(model, tokenizer, problems, max_new_tokens=cfg.max_new_tokens)
        summary.update({f"{name}_accuracy": round(result.accuracy, 4),
                        f"{name}_tokens_per_s": round(result.tokens_per_s, 1),
                        f"{name}_format_rate": round(result.format_rate, 4),
                        **{f"{name}_accuracy_{f}": round(a, 4) for f, a in sorted(result.per_family.items())}})
    summary["eval_problems"] = len(problems)
    return summary


def _refuse_or_warn(ctx: StageContext, teacher_art, student_art, differences: list[str]) -> None:
    message = (f"teacher {teacher_art.label} and student {student_art.label} tokenizers differ "
               f"({', '.join(differences)}): the KL term needs one vocabulary")
    if ctx.config.on_tokenizer_mismatch == "error":
        raise UserError(message + "; set kl_weight=0 or on_tokenizer_mismatch='warn' to train on text only")
    ctx.warn(message + "; training on the samples' text only (kl_weight ignored)")


STAGE = StageSpec(
    name="distill",
    version=2,
    config=DistillConfig,
    run=run,
    output="checkpoint",
    inputs={
        "samples": Input("samples", help="accepted completions from rejection_sample"),
        "teacher": Input("checkpoint", help="the teacher: tokenizer, KL targets and the baseline"),
        "student": Input("checkpoint", optional=True, help="start the student from this checkpoint"),
        "problems": PROBLEMS_INPUT,
    },
    help="Distill a smaller student from a teacher: SFT on its rejection samples, plus an optional "
         "KL(teacher ∥ student) term on the completion tokens; reports student vs teacher accuracy and speed.",
    example="dsctl distill --from samples=mini_r1:rejection_sample --from teacher=mini_r1:grpo --set kl_weight=0",
)
