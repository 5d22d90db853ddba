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

from dsctl.errors import UserError
from dsctl.stage import Input, StageContext, StageSpec
from dsctl.train.config import TrainConfig

TOKENIZER_IDENTITY_FILES = ("tokenizer.model", "special_tokens.json")


@dataclass
class DistillConfig(TrainConfig):
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
    train_problems: int = 0
    """Also train on this many task worked solutions (0 = the teacher's samples only, as R1)."""
    families: list[str] = field(default_factory=lambda: ["arithmetic"])
    """Task families of the eval problems (and of `train_problems`)."""
    difficulty: dict[str, dict] = field(default_factory=dict)
    """Per-family difficulty overrides ({} = the families' defaults, shared by every
    post-training stage)."""
    val_fraction: float = 0.05
    """Share of examples held out for validation loss (and the final KL)."""
    eval_problems: int = 64
    """Eval-split problems decoded greedily by student and teacher (0 skips the comparison)."""
    eval_max_new_tokens: int = 64
    """Token budget of each greedy completion in the comparison."""
    max_steps: int = 200
    """Optimizer steps to take."""
    lr: float = 2e-3
    """Peak learning rate."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many steps (and at the end)."""
    eval_every: int = 50
    """Validation loss every this many steps."""
    eval_batches: int = 4
    """Validation micro-batches per evaluation."""


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from dsctl.sft import split_validation
    from dsctl.tokenizer import Tokenizer
    from dsctl.train import PackedExamples, Trainer
    from dsctl.train.artifacts import export_checkpoint, load_model, tokenizer_dir
    from dsctl.train.checkpoint import latest_checkpoint
    from dsctl.train.loop import resolve_device

    cfg: DistillConfig = ctx.config
    teacher_art, student_art = ctx.input("teacher"), ctx.maybe_input("student")
    tok_dir = tokenizer_dir(student_art or teacher_art)
    tokenizer = Tokenizer.load(tok_dir)
    teacher = load_model(teacher_art)
    differences = tokenizer_differences(teacher_art, student_art, teacher)
    if differences and cfg.kl_weight > 0:
        _refuse_or_warn(ctx, teacher_art, student_art, differences)
    use_kl = cfg.kl_weight > 0 and not differences
    examples, counts = _examples(ctx, tokenizer)
    train, val = split_validation(examples, cfg.val_fraction, ctx.seed)
    ctx.info(f"{len(train)} training / {len(val)} validation examples; KL term {'on' if use_kl else 'off'}")

    student = _student(ctx, tokenizer, student_art, teacher)
    teacher.to(resolve_device(cfg.device)).eval().requires_grad_(False)
    loss_fn = make_distill_loss(teacher if use_kl else None, cfg.kl_weight, cfg.kl_temperature, cfg.doc_masking)
    batches = PackedExamples(train, cfg.seq_len, cfg.batch_size, tokenizer.pad_id, ctx.seed, grad_accum=cfg.grad_accum)
    val_batches = PackedExamples(val, cfg.seq_len, cfg.batch_size, tokenizer.pad_id, ctx.seed, shuffle=False)
    trainer = Trainer(student, batches, cfg, ctx, val_batches=val_batches, loss_fn=loss_fn)
    fit = trainer.fit()
    summary: dict[str, Any] = {}
    if cfg.eval_problems:
        summary.update(_compare(ctx, trainer.model, teacher, tokenizer))
    if not differences:  # the KL is only defined over one vocabulary
        with torch.no_grad():
            summary["val_kl_teacher_student"] = round(_validation_kl(trainer, teacher, cfg), 5)
    summary.update(fit)
    summary.update(kl_used=use_kl, train_examples=len(train), val_examples=len(val), **counts,
                   student_params=trainer.model.num_parameters()[0], teacher_params=teacher.num_parameters()[0])
    export_checkpoint(trainer.model.cpu(), ctx.out, tok_dir, latest_checkpoint(trainer.ckpt_dir))
    return summary


def make_distill_loss(teacher, kl_weight: float, temperature: float, doc_masking: bool = True):
    """A Trainer loss_fn: the LM (+ MTP + balance) loss of the student on the learned
    tokens, plus kl_weight × the logit-distillation term when a teacher is given."""
    import torch

    from dsctl.model.loss import LossOutput, shifted_cross_entropy
    from dsctl.sft import logit_distillation_kl

    def loss_fn(model, batch):
        ids, labels = batch["input_ids"], batch["labels"]
        doc_ids = batch.get("doc_ids") if doc_masking else None
        use_mtp = model.config.mtp_loss_weight > 0 and len(model.mtp) > 0
        out = model(ids, doc_ids=doc_ids, mtp=use_mtp, return_outputs=True)
        lm_loss, n_tokens = shifted_cross_entropy(out.logits, labels, 1, doc_ids)
        mtp_loss = lm_loss.new_zeros(())
        if use_mtp:
            mtp_loss = torch.stack([shifted_cross_entropy(lg, labels, k, doc_ids)[0]
                                    for k, lg in enumerate(out.mtp_logits, start=2)]).mean()
        loss = lm_loss + model.config.mtp_loss_weight * mtp_loss + out.balance_loss
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(ids, doc_ids=doc_ids)
            loss = loss + kl_weight * logit_distillation_kl(out.logits, teacher_logits, labels, temperature, doc_ids)
        return LossOutput(loss=loss, lm_loss=lm_loss, mtp_loss=mtp_loss, balance_loss=out.balance_loss,
                          n_tokens=n_tokens)

    return loss_fn


def tokenizer_differences(teacher_art, student_art, teacher) -> list[str]:
    """What differs between the teacher's and the student's tokenizer (tokenizer files,
    vocab size); [] for a fresh student, which is built on the teacher's tokenizer."""
    import json

    from dsctl.train.artifacts import tokenizer_dir

    if student_art is None:
        return []
    a, b = tokenizer_dir(teacher_art), tokenizer_dir(student_art)
    differ = [n for n in TOKENIZER_IDENTITY_FILES
              if (a / n).is_file() != (b / n).is_file() or ((a / n).is_file() and (a / n).read_bytes() != (b / n).read_bytes())]
    student_vocab = json.loads((student_art.path / "config.json").read_text()).get("vocab_size")
    if student_vocab != teacher.config.vocab_size:
        differ.append(f"vocab_size {student_vocab} vs {teacher.config.vocab_size}")
    return differ


def _refuse_or_warn(ctx: StageContext, teacher_art, student_art, differences: list[str]) -> None:
    message = (f"teacher {teacher_art.label} and student {student_art.label} tokenizers differ "
               f"({', '.join(differences)}): the KL term needs one vocabulary")
    if ctx.config.on_tokenizer_mismatch == "error":
        raise UserError(message + "; set kl_weight=0 or on_tokenizer_mismatch='warn' to train on text only")
    ctx.warn(message + "; training on the samples' text only (kl_weight ignored)")


def _student(ctx: StageContext, tokenizer, student_art, teacher):
    import torch

    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.train.artifacts import load_model

    if student_art is not None:
        return load_model(student_art)
    cfg: DistillConfig = ctx.config
    torch.manual_seed(ctx.seed)
    if cfg.student_layers:
        model = student_from_layers(teacher, cfg.student_layers, cfg.student_overrides)
        ctx.info(f"student from teacher layers {cfg.student_layers}: {model.num_parameters()[0] / 1e6:.2f}M "
                 f"parameters (teacher {teacher.num_parameters()[0] / 1e6:.2f}M)")
        return model
    overrides = {"vocab_size": tokenizer.vocab_size, **cfg.student_overrides}
    model = DeepSeekV3(ModelConfig.preset(cfg.student, **overrides))
    ctx.info(f"fresh student {cfg.student} {cfg.student_overrides}: {model.num_parameters()[0] / 1e6:.2f}M parameters")
    return model


def student_from_layers(teacher, layers: list[int], overrides: dict[str, Any] | None = None):
    """A shallower copy of `teacher`: its embeddings, final norm, head, MTP modules (unless
    the overrides drop them) and decoder `layers`, in order, as the student's layers 0..n−1."""
    import dataclasses

    from dsctl.model import DeepSeekV3

    n = teacher.config.num_hidden_layers
    if sorted(set(layers)) != list(layers) or not all(0 <= i < n for i in layers):
        raise UserError(f"student_layers {layers} must be increasing teacher layer indices in 0..{n - 1}")
    dense = teacher.config.first_k_dense_replace
    if [i for i in layers if i < dense] != list(range(min(dense, len(layers)))):
        # layer j of the student is dense iff j < first_k_dense_replace, so the dense ones must come first
        raise UserError(f"student_layers {layers} must start with the teacher's {dense} dense layer(s) 0..{dense - 1}")
    try:
        config = dataclasses.replace(teacher.config, num_hidden_layers=len(layers), **(overrides or {}))
    except TypeError as exc:
        raise UserError(f"student_overrides: {exc}") from None
    student = DeepSeekV3(config)
    source = teacher.state_dict()
    mapped = {}  # student key -> teacher key; only decoder layer numbers move
    for key in student.state_dict():
        parts = key.split(".")
        if parts[0] == "layers":
            parts[1] = str(layers[int(parts[1])])
        mapped[key] = ".".join(parts)
    wrong = [k for k, t in mapped.items() if t not in source or source[t].shape != student.state_dict()[k].shape]
    if wrong:
        raise UserError(f"student_overrides change copied shapes ({wrong[0]}, …): use keys that keep them")
    student.load_state_dict({k: source[t] for k, t in mapped.items()})
    return student


def _examples(ctx: StageContext, tokenizer) -> tuple[list, dict[str, int]]:
    from dsctl.sft import RowStats, artifact_conversations, encode_conversations, task_conversations

    cfg: DistillConfig = ctx.config
    stats = RowStats()
    convs = artifact_conversations(ctx.input("samples").path, stats)
    counts = {"sample_examples": len(convs), "malformed_rows": stats.malformed}
    if cfg.train_problems:
        convs += task_conversations(cfg.families, cfg.train_problems, ctx.seed, cfg.difficulty)
    counts["task_examples"] = len(convs) - counts["sample_examples"]
    # what the student learns from: the teacher's samples, or worked solutions of the tasks
    counts["teacher_sample_share"] = round(counts["sample_examples"] / max(len(convs), 1), 4)
    examples, counts["too_long"] = encode_conversations(tokenizer, convs, cfg.seq_len)
    if not examples:
        raise UserError(f"distill: {ctx.input('samples').label} has no usable samples "
                        "(was anything accepted by rejection_sample?)")
    return examples, counts


def _compare(ctx: StageContext, student, teacher, tokenizer) -> dict[str, Any]:
    """Greedy accuracy and decode speed of student and teacher on the same problems."""
    from dsctl.sampling import greedy_accuracy, task_problems

    cfg: DistillConfig = ctx.config
    problems = task_problems(cfg.families, "eval", cfg.eval_problems, ctx.seed, cfg.difficulty)
    s = greedy_accuracy(student, tokenizer, problems, max_new_tokens=cfg.eval_max_new_tokens)
    t = greedy_accuracy(teacher, tokenizer, problems, max_new_tokens=cfg.eval_max_new_tokens)
    return {"student_accuracy": round(s.accuracy, 4), "teacher_accuracy": round(t.accuracy, 4),
            "student_tokens_per_s": round(s.tokens_per_s, 1), "teacher_tokens_per_s": round(t.tokens_per_s, 1),
            "student_format_rate": round(s.format_rate, 4), "teacher_format_rate": round(t.format_rate, 4),
            **{f"student_accuracy_{f}": round(a, 4) for f, a in sorted(s.per_family.items())},
            **{f"teacher_accuracy_{f}": round(a, 4) for f, a in sorted(t.per_family.items())},
            "eval_problems": len(problems)}


def _validation_kl(trainer, teacher, cfg: DistillConfig) -> float:
    """Mean KL(teacher ∥ student) at T=1 over the validation batches (0 = same model)."""
    from dsctl.sft import logit_distillation_kl

    trainer.model.eval()
    values = []
    for i in range(cfg.eval_batches):
        batch = {k: v.to(trainer.device) for k, v in trainer.val_batches.batch(i).items()}
        doc_ids = batch["doc_ids"] if cfg.doc_masking else None
        values.append(float(logit_distillation_kl(trainer.model(batch["input_ids"], doc_ids=doc_ids),
                                                  teacher(batch["input_ids"], doc_ids=doc_ids),
                                                  batch["labels"], 1.0, doc_ids)))
    return sum(values) / len(values)


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
    },
    help="Distill a smaller student from a teacher: SFT on its rejection samples, plus an optional "
         "KL(teacher ∥ student) term on the completion tokens; reports student vs teacher accuracy and speed.",
    example="dsctl distill --from samples=mini_r1:rejection_sample --from teacher=mini_r1:grpo --set kl_weight=0",
)
