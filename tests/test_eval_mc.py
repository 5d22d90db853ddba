"""Multiple-choice log-likelihood scoring, checked against a hand computation."""

from pathlib import Path

import pytest
import torch

from dsctl.errors import UserError
from dsctl.eval.multiple_choice import continuation_tokens, load_choice_questions, score_multiple_choice
from dsctl.model import DeepSeekV3, ModelConfig

FIXTURE = Path(__file__).parent / "fixtures" / "mc_tiny.jsonl"


class ByteTokenizer:
    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def hand_loglikelihood(model, context: str, continuation: str) -> float:
    """log p(continuation | context): one unpadded forward, then Σ log-softmax at each
    continuation token's position (the token at position t is predicted at t - 1)."""
    ctx_ids, cont_ids = list(context.encode()), list(continuation.encode())
    with torch.no_grad():
        logprobs = model(torch.tensor([ctx_ids + cont_ids]))[0].double().log_softmax(-1)
    return sum(float(logprobs[len(ctx_ids) + i - 1, tok]) for i, tok in enumerate(cont_ids))


def test_loader_reads_index_and_text_answers():
    qs = load_choice_questions(FIXTURE)
    assert [q.answer for q in qs] == [0, 0, 0]
    assert qs[1].choices == ("four", "five")


def test_loader_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n'
                   '{"question": "q", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: 'choices'"):
        load_choice_questions(bad)
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": "c"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: answer 'c'"):
        load_choice_questions(bad)


def test_trailing_context_space_moves_to_the_continuation():
    ctx_ids, cont_ids = continuation_tokens(ByteTokenizer(), "Two plus two equals ", " four")
    assert bytes(ctx_ids) == b"Two plus two equals"
    assert bytes(cont_ids) == b"  four"


def test_scores_match_hand_computed_loglikelihoods_and_argmaxes():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=256, num_nextn_predict_layers=0)).eval()
    questions = load_choice_questions(FIXTURE)
    result = score_multiple_choice(model, ByteTokenizer(), questions, batch_size=4)
    acc = acc_norm = 0
    for q, scored in zip(questions, result["per_question"]):
        context = q.question.rstrip(" ")
        spaces = " " * (len(q.question) - len(context))
        hand = [hand_loglikelihood(model, context, spaces + " " + c) for c in q.choices]
        assert scored["loglikelihoods"] == pytest.approx(hand, abs=1e-4)
        pred = max(range(len(hand)), key=hand.__getitem__)
        pred_norm = max(range(len(hand)), key=lambda i: hand[i] / len(q.choices[i].encode()))
        assert (scored["pred"], scored["pred_norm"]) == (pred, pred_norm)
        acc += pred == q.answer
        acc_norm += pred_norm == q.answer
    assert result["acc"] == pytest.approx(acc / 3) and result["acc_norm"] == pytest.approx(acc_norm / 3)
    assert result["n"] == 3


def test_long_inputs_keep_their_last_tokens():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=256, num_nextn_predict_layers=0)).eval()
    from dsctl.eval.multiple_choice import loglikelihoods

    ctx, cont = list(b"abcdefghij"), list(b"xy")
    short = loglikelihoods(model, [(ctx, cont)], max_length=6)[0]
    assert short == pytest.approx(hand_loglikelihood(model, "fghij", "xy"), abs=1e-4)
