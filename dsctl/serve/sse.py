"""A reply's text as its tokens arrive, and the server-sent events that carry it.

`TextStream` grows the text one token at a time without decoding the whole reply again
(the last two offsets of the token list are kept, as vLLM's detokenizer does: decode the
tokens since the previous step's start, keep what is new), holds back bytes of a
character not yet complete, cuts the reply at a stop string (OpenAI's API never returns
one), and holds back a tail that may still turn into one. `Chunks` writes the OpenAI
streaming chunk of a chat or text completion.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()) -> None:
        self.decode, self.stops = decode, stops
        self.tokens: list[int] = []
        self.text = ""
        """The reply's decoded text so far, whole characters only."""
        self.sent = 0
        """How much of the visible text `delta` has handed out."""
        self._prefix = self._read = 0

    def add(self, token: int) -> None:
        self.tokens.append(token)
        new = self.decode(self.tokens[self._prefix:])
        if new.endswith("\ufffd"):  # the bytes of a character still arriving
            return
        old = self.decode(self.tokens[self._prefix:self._read])
        self.text += new[len(old):]
        self._prefix, self._read = self._read, len(self.tokens)

    def visible(self, final: bool = False) -> str:
        """The text up to the first stop string; before the reply ends, without a tail that
        could still become one."""
        if final:
            return self.final_text()
        # Text already sent neither holds a stop string nor ends in the start of one, so a
        # stop string can only begin at `sent` or later.
        cuts = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if cuts:
            return self.text[:min(cuts)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self.text[:len(self.text) - hold]

    def delta(self, final: bool = False) -> str:
        """The visible text not handed out yet."""
        shown = self.visible(final)
        piece, self.sent = shown[self.sent:], max(self.sent, len(shown))
        return piece

    def final_text(self) -> str:
        """The whole reply, decoded once, cut at its first stop string."""
        text = self.decode(self.tokens)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return text[:min(cuts)] if cuts else text


@dataclass(frozen=True)
class Chunks:
    """The `data:` lines of one streamed response."""

    rid: str
    kind: str
    """"chat" or "completion"."""
    model_name: str

    def chunk(self, index: int, delta: str | None, finish: str | None, first: bool = False) -> str:
        if self.kind == "chat":
            payload: dict[str, Any] = {"role": "assistant"} if first else {}
            if delta:
                payload["content"] = delta
            choice = {"index": index, "delta": payload, "finish_reason": finish}
        else:
            choice = {"index": index, "text": delta or "", "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self.data({"id": self.rid, "object": obj, "created": int(time.time()), "model": self.model_name,
                          "choices": [choice]})

    @staticmethod
    def data(payload: dict[str, Any] | str) -> str:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
