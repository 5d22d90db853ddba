"""Tokenizer: lossless round trip, reserved tokens, determinism, chat masks, HF parity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsctl.errors import UserError
from dsctl.tokenizer import SPECIAL_TOKENS, Tokenizer

PROSE = [
    "The quick brown fox jumps over the lazy dog. It was 1984, and 42 apples cost $3.50.",
    "Tokenizers split text into pieces; frequent words become single pieces.",
    "def add(a, b):\n    \"\"\"Return the sum.\"\"\"\n    return a + b\n\n\nprint(add(2, 3))",
    "Question: What is 306 + 12?\n<think>6 + 2 = 8. 0 + 1 = 1. 3 + 0 = 3.</think><answer>318</answer>",
    "Café, naïve, façade, jalapeño — résumé. Ελληνικά. Русский текст.",
]
VARIED = [
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\t\tmore\ttabs",
    "if x:\n\tif y:\n\t\treturn [i for i in range(10)]\n",
    "    four-space indent\n        eight\n",
    "runs     of      spaces and\n\n\n\nnewlines",
    "windows\r\nline\r\nendings",
    "日本語のテキストと中文文本，한국어도。",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇫🇷 and symbols ∑∫√∞ ≠ ≤",
    "accents: àéîõü ÅØÆ ß ﬁ ligature, combining e\u0301",
    "digits 0123456789 3.14159 -2.5e-10 1,000,000",
    "<|bos|><|user|>hi<|eos|><|assistant|><think>a</think><answer>b</answer><|eos|><|pad|>",
    "specials inside words: x<think>y</think>z and <answer >not one</answer>",
    "control \x00\x01\x7f chars and \u00a0nbsp \u3000ideographic space \u200bzero-width",
    "a" * 300 + " " + "xyz " * 50,
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    corpus = PROSE * 40 + [f"Line {i}: {PROSE[i % len(PROSE)]}" for i in range(200)]
    return Tokenizer.train(corpus, vocab_size=700, out_dir=tmp_path_factory.mktemp("tok"), seed=0)


def test_round_trip_is_lossless_on_varied_text(tok):
    for text in VARIED + PROSE:
        assert tok.decode(tok.encode(text)) == text, repr(text)


def test_reserved_tokens_are_single_ids_matched_atomically(tok):
    assert set(tok.special_tokens) == set(SPECIAL_TOKENS)
    assert len(set(tok.special_tokens.values())) == len(SPECIAL_TOKENS)
    for token, token_id in tok.special_tokens.items():
        assert tok.encode(token) == [token_id]
        assert token_id in tok.encode(f"before{token}after")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(tok.special_tokens[t] for t in SPECIAL_TOKENS[:3])


def test_digits_are_split_one_per_token(tok):
    ids = tok.encode("31415926")
    assert [tok.decode([i]) for i in ids] == list("31415926")


def test_unseen_characters_fall_back_to_bytes_not_unknown(tok):
    unk = tok.sp.unk_id()
    assert unk not in tok.encode("漢字 🦜 ∮")


def test_training_is_deterministic(tmp_path):
    corpus = PROSE * 20
    a = Tokenizer.train(corpus, 500, tmp_path / "a", seed=3)
    b = Tokenizer.train(iter(corpus), 500, tmp_path / "b", seed=3)
    for name in ("tokenizer.model", "special_tokens.json", "tokenizer.json", "tokenizer_config.json"):
        assert (a.directory / name).read_bytes() == (b.directory / name).read_bytes(), name


def test_encode_chat_masks_assistant_content_and_closing_eos(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>2+2=4</think><answer>4</answer>"},
    ]
    ids, mask = tok.encode_chat(messages)
    assert len(ids) == len(mask) and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    learned = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(learned) == "<think>2+2=4</think><answer>4</answer><|eos|>"
    assert tok.decode(ids) == "<|bos|><|system|>Be brief.<|eos|><|user|>What is 2+2?<|eos|><|assistant|>" \
        "<think>2+2=4</think><answer>4</answer><|eos|>"
    # The layout is plain text with atomic specials: encoding the rendered string agrees.
    assert tok.encode(tok.decode(ids)) == ids


def test_chat_prompt_ends_with_the_assistant_token(tok):
    ids = tok.chat_prompt("Hi there", system="Sys")
    assert ids[-1] == tok.special_tokens["<|assistant|>"]
    assert tok.decode(ids) == "<|bos|><|system|>Sys<|eos|><|user|>Hi there<|eos|><|assistant|>"
    with pytest.raises(ValueError, match="role"):
        tok.encode_chat([{"role": "robot", "content": "x"}])


def test_hf_autotokenizer_loads_offline_and_encodes_identically(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok.directory))
    for text in VARIED + PROSE:
        assert hf(text, add_special_tokens=True)["input_ids"] == tok.encode(text), repr(text)
        assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<answer>4</answer>"}]
    rendered = hf.apply_chat_template(messages, tokenize=True)
    rendered = rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered
    assert list(rendered) == tok.encode_chat(messages)[0]


def test_load_names_a_directory_without_a_model(tmp_path):
    with pytest.raises(UserError, match="tokenizer.model"):
        Tokenizer.load(tmp_path)


def test_tokenizer_dir_holds_the_contract_files(tok):
    names = set(os.listdir(tok.directory))
    assert {"tokenizer.model", "special_tokens.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert Path(tok.directory / "tokenizer.json").stat().st_size > 0


def test_training_on_an_empty_corpus_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer training failed"):
        Tokenizer.train(["", "\n\n"], 500, tmp_path)
