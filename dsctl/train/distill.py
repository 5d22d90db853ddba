"""Distillation: a student built from a teacher's layers, and the loss that teaches it.

    student = student_from_layers(teacher, [0, 3])           # a shallower teacher
    loss_fn = make_distill_loss(teacher, kl_weight=0.5, temperature=2.0)
    LMTrainer(student, batches, cfg, io, loss_fn=loss_fn).fit()

`tokenizer_differences` says whether a given student shares the teacher's vocabulary,
which the logit term needs.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
import torch.nn.functional as F

from dsctl.errors import UserError
from dsctl.model import DeepSeekV3
from dsctl.model.loss import compute_loss, scored_positions
from dsctl.train.artifacts import tokenizer_dir

TOKENIZER_IDENTITY_FILES = ("tokenizer.model", "special_tokens.json", "tokenizer.json")
"""The files whose bytes fix a tokenizer's ids, of either kind (dsctl.tokenizer)."""


def make_distill_loss(teacher, kl_weight: float, temperature: float, doc_masking: bool = True):
    """A Trainer loss_fn: the training loss every stage uses (dsctl.model.compute_loss:
    next-token + MTP + balance) on the learned tokens, plus kl_weight × KL(teacher_T ∥
    student_T) at the same positions when a teacher is given."""
    def loss_fn(model, batch):
        ids, labels = batch["input_ids"], batch["labels"]
        doc_ids = batch.get("doc_ids") if doc_masking else None
        out = compute_loss(model, ids, labels, doc_ids=doc_ids, return_logits=teacher is not None)
        if teacher is not None and out.logits is not None:
            with torch.no_grad():
                targets = teacher(ids, doc_ids=doc_ids)[:, :-1][scored_positions(labels, 1, doc_ids)]
            out.loss = out.loss + kl_weight * softened_kl(out.logits, targets, temperature)
        return out

    return loss_fn


def tokenizer_differences(teacher_art, student_art, teacher) -> list[str]:
    """What differs between the teacher's and the student's tokenizer (tokenizer files,
    vocab size); [] for a fresh student, which is built on the teacher's tokenizer."""
    if student_art is None:
        return []
    a, b = tokenizer_dir(teacher_art), tokenizer_dir(student_art)
    differ = [n for n in TOKENIZER_IDENTITY_FILES
              if (a / n).is_file() != (b / n).is_file()
              or ((a / n).is_file() and (a / n).read_bytes() != (b / n).read_bytes())]
    student_vocab = json.loads((student_art.path / "config.json").read_text()).get("vocab_size")
    if student_vocab != teacher.config.vocab_size:
        differ.append(f"vocab_size {student_vocab} vs {teacher.config.vocab_size}")
    return differ


def student_from_layers(teacher, layers: list[int], overrides: dict[str, Any] | None = None):
    """A shallower copy of `teacher`: its embeddings, final norm, head, MTP modules (unless
    the overrides drop them) and decoder `layers`, in order, as the student's layers 0..n−1."""
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


def logit_distillation_kl(student_logits, teacher_logits, labels, temperature: float = 1.0, doc_ids=None):
    """Mean over learned positions of KL(teacher ∥ student) between the next-token
    distributions softened at `temperature`, times T² (Hinton et al.) so its gradient
    scale does not shrink as T grows.

    `labels` are HF-aligned like the LM loss (logits at t predict labels[t+1]); positions
    whose next label is −100 (prompt, padding) or lies in another packed document (with
    `doc_ids`) are not scored. Returns 0 when none are.
    """
    keep = scored_positions(labels, 1, doc_ids)
    if not keep.any():
        return student_logits.sum() * 0.0
    return softened_kl(student_logits[:, :-1][keep], teacher_logits[:, :-1][keep], temperature)


def softened_kl(student_logits, teacher_logits, temperature: float):
    """Mean over rows of T² · KL(softmax(teacher / T) ∥ softmax(student / T)), for (N, vocab) logits."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * temperature**2


@torch.no_grad()
def validation_kl(student, teacher, batches, n_batches: int, device, doc_masking: bool = True) -> float:
    """Mean KL(teacher ∥ student) at T = 1 over `n_batches` validation batches (0 = same model)."""
    student.eval()
    values = []
    for i in range(n_batches):
        batch = {k: v.to(device) for k, v in batches.batch(i).items()}
        doc_ids = batch["doc_ids"] if doc_masking else None
        values.append(float(logit_distillation_kl(student(batch["input_ids"], doc_ids=doc_ids),
                                                  teacher(batch["input_ids"], doc_ids=doc_ids),
                                                  batch["labels"], 1.0, doc_ids)))
    return sum(values) / len(values)
