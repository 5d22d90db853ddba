"""Multiple-choice tasks scored by log-likelihood, the way lm-evaluation-harness does it.

A JSONL file holds one question per line:

    {"question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0}

(`answer` is the index of the right choice, or its text). Each choice is scored as the
sum of the log-probabilities of its tokens given the question: context = question,
continuation = " " + choice (the harness's default target delimiter), continuation
tokens = encode(context + continuation) past the tokens of encode(context), with
trailing spaces of the context moved onto the continuation as the harness does.

    acc       = 1 if the choice with the highest sum log-prob is right
    acc_norm  = the same with each sum divided by the choice's length in UTF-8 bytes
                (the harness divides by len(choice) in characters: the same for ASCII)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsctl.errors import UserError

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class ChoiceQuestion:
    question: str
    choices: tuple[str, ...]
    answer: int
    """Index of the right choice."""


def load_choice_questions(path: Path) -> list[ChoiceQuestion]:
    """Read a multiple-choice JSONL file; errors name the file and line."""
    questions = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not {"question", "choices", "answer"} <= set(row):
            raise UserError(f"{where}: a row needs 'question', 'choices' and 'answer'")
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: 'choices' must be a list of at least two strings")
        answer = row["answer"]
        if isinstance(answer, str):
            if answer not in choices:
                raise UserError(f"{where}: answer {answer!r} is not one of the choices")
            answer = choices.index(answer)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise UserError(f"{where}: 'answer' must be a choice index in [0, {len(choices)}) or a choice's text")
        questions.append(ChoiceQuestion(str(row["question"]), tuple(choices), answer))
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


def continuation_tokens(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model: Any, requests: list[tuple[list[int], list[int]]], max_length: int,
                   batch_size: int = 16) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids).

    Rows are right-padded: attention is causal and MoE routing never drops tokens, so
    padding after a row's last real token cannot change that row's scores. Inputs
    longer than `max_length` keep their last `max_length` tokens, as the harness does.
    """
    import torch

    scores: list[float] = []
    model.eval()
    for lo in range(0, len(requests), batch_size):
        rows = []
        for context, continuation in requests[lo:lo + batch_size]:
            if not continuation:
                raise ValueError("a continuation encodes to no tokens")
            whole = (context + continuation)[-(max_length + 1):]
            rows.append((whole[:-1], len(continuation)))  # the last token is only a target
        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (row_ids, _) in enumerate(rows):
            ids[r, :len(row_ids)] = torch.tensor(row_ids)
        with torch.no_grad():
            logprobs = model(ids.to(next(model.parameters()).device)).float().log_softmax(-1).cpu()
        for r, (_, continuation) in enumerate(requests[lo:lo + batch_size]):
            n_in, n_cont = len(rows[r][0]), rows[r][1]
            # Position t predicts token t+1; the continuation is the last n_cont targets.
            positions = torch.arange(n_in - n_cont, n_in)
            targets = torch.tensor(continuation)
            scores.append(float(logprobs[r, positions, targets].sum()))
    return scores


def score_multiple_choice(model: Any, tokenizer: Any, questions: list[ChoiceQuestion],
                          max_length: int = 1024, batch_size: int = 16) -> dict[str, Any]:
    """{"acc", "acc_norm", "n", "per_question": [...]} over `questions`."""
    requests = [continuation_tokens(tokenizer, q.question, TARGET_DELIMITER + choice)
                for q in questions for choice in q.choices]
    lls = loglikelihoods(model, requests, max_length, batch_size)
    per_question, offset = [], 0
    for q in questions:
        ll = lls[offset:offset + len(q.choices)]
        offset += len(q.choices)
        norm = [s / len(c.encode("utf-8")) for s, c in zip(ll, q.choices)]
        pick = max(range(len(ll)), key=ll.__getitem__)
        pick_norm = max(range(len(norm)), key=norm.__getitem__)
        per_question.append({"loglikelihoods": [round(x, 6) for x in ll], "pred": pick, "pred_norm": pick_norm,
                             "answer": q.answer})
    n = len(questions)
    return {"acc": sum(p["pred"] == p["answer"] for p in per_question) / n,
            "acc_norm": sum(p["pred_norm"] == p["answer"] for p in per_question) / n,
            "n": n, "per_question": per_question}
