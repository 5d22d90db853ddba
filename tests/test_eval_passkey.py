"""Passkey documents: exact length, one needle with the key, needles spread over the context."""

import pytest

from dsctl.eval.passkey import retrieved_key
from dsctl.tasks.passkey import QUESTION, make_passkey_document, passkey_documents, spread_depths


class ByteTokenizer:
    """UTF-8 bytes as token ids: a complete (if long-winded) tokenizer."""

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_document_has_requested_length_and_one_needle_with_the_key():
    tok = ByteTokenizer()
    doc = make_passkey_document(tok, 600, 0.5, "71432")
    assert len(doc.prompt_ids) + len(doc.answer_ids) == 600
    text = tok.decode(doc.prompt_ids)
    assert text.count("The pass key is 71432.") == 1
    assert text.endswith(QUESTION)
    assert tok.decode(doc.answer_ids) == " 71432"
    assert tok.decode(doc.prompt_ids[doc.needle_start:]).startswith("The pass key is 71432")


def test_needle_positions_spread_over_the_context():
    tok = ByteTokenizer()
    docs = passkey_documents(tok, 1000, 8, seed=3)
    starts = [d.needle_start for d in docs]
    assert starts == sorted(starts) and len(set(starts)) == 8
    assert starts[0] < 1000 * 0.15 and starts[-1] > 1000 * 0.75
    assert spread_depths(4) == [0.125, 0.375, 0.625, 0.875]
    keys = [d.key for d in docs]
    assert all(len(k) == 5 and k.isdigit() for k in keys) and len(set(keys)) > 1
    assert [d.key for d in passkey_documents(tok, 1000, 8, seed=3)] == keys  # seeded


def test_depth_zero_and_one_put_the_needle_at_the_ends():
    tok = ByteTokenizer()
    first = make_passkey_document(tok, 400, 0.0, "12345")
    last = make_passkey_document(tok, 400, 1.0, "12345")
    assert first.needle_start == 0
    assert tok.decode(last.prompt_ids).endswith("12345 is the pass key. " + QUESTION)


def test_too_short_a_document_is_refused():
    with pytest.raises(ValueError, match="needs at least"):
        make_passkey_document(ByteTokenizer(), 20, 0.5, "12345")


def test_retrieved_key_reads_the_first_digit_run():
    assert retrieved_key(" 71432. Remember") == "71432"
    assert retrieved_key(" the key") is None
