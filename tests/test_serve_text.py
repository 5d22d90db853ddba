"""The streamed text of a reply: grown token by token without re-decoding the whole
reply, cut at a stop string (never shown), with a possible stop-string start held back
and multi-byte characters sent whole."""

from dsctl.serve.sse import TextStream
from tests.sft_support import make_tokenizer


def test_streamed_deltas_add_up_to_the_decoded_reply_and_stop_strings_are_cut(tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok")
    reply = "The sum is 84. naïve café 🙂 END and more text after the stop"
    ids = tokenizer.encode(reply)
    calls = []

    def decode(tokens):
        calls.append(len(tokens))
        return tokenizer.decode(tokens)

    stream = TextStream(decode, stops=("END",))
    pieces = []
    for token in ids:
        stream.add(token)
        pieces.append(stream.delta())
    pieces.append(stream.delta(final=True))
    assert "".join(pieces) == reply[:reply.index("END")]
    assert not any("\ufffd" in p for p in pieces)  # a character's bytes arrive, then the character
    assert max(calls[:-1]) <= 8  # only the last few tokens are decoded per step (the final text once, whole)

    plain = TextStream(tokenizer.decode)
    for token in ids:
        plain.add(token)
    assert plain.text == reply and plain.final_text() == reply


def test_the_start_of_a_stop_string_is_held_back_until_it_cannot_be_one():
    letters = "abcdefghijklmnopqrstuvwxyz"

    def decode(tokens):
        return "".join(letters[t] for t in tokens)

    stream = TextStream(decode, stops=("xyz",))
    shown = []
    for t in [0, 1, 23, 24]:  # a b x y: "xy" may begin "xyz"
        stream.add(t)
        shown.append(stream.delta())
    assert shown == ["a", "b", "", ""]
    stream.add(2)  # c: it was not the stop string after all
    assert stream.delta() == "xyc"
