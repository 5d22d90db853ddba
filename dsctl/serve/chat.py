"""Talk to a checkpoint in a terminal: a multi-turn chat that streams each reply.

`dsctl chat REF` (dsctl.cli.commands) loads the model and tokenizer and calls `chat_loop`.
Every turn re-encodes the whole history in the chat template the model was fine-tuned
on (the tokenizer's `encode_chat`) and streams the reply token by token
(`dsctl.model.generate.stream`); the `<think>` trace is shown dimmed and the answer
plainly. `/reset` forgets the history, `/exit` (or end of input) leaves. When stdin is
not a terminal each line is one turn, answered once, so `echo "What is 36 + 48?" | dsctl
chat mini_r1:grpo` prints one reply and exits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.console import Console

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ChatSettings:
    """How each reply is sampled."""

    temperature: float = 0.6
    """0 = greedy; R1-style models are usually sampled at 0.6."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_new_tokens: int = 256
    """Longest reply, in tokens."""
    seed: int = 0
    """Seed of the first reply; turn t uses seed + t, so a session replays exactly."""


class TraceRenderer:
    """Prints a reply as it grows: text inside <think>…</think> dimmed, the rest plain.

    `update(text)` gets the whole reply so far and prints what is new; a tag cut in half
    at the end of `text` is held back until the next update shows what it is."""

    def __init__(self, console: Console) -> None:
        self.console, self.shown, self.thinking = console, 0, False

    def update(self, text: str, final: bool = False) -> None:
        end = len(text) if final else _safe_end(text)
        while self.shown < end:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = text.find(tag, self.shown, end)
            stop = end if at < 0 else at
            self._write(text[self.shown:stop], dim=self.thinking)
            if at >= 0:
                self._write(tag, dim=True)
                self.thinking = not self.thinking
                stop = at + len(tag)
            self.shown = stop

    def _write(self, text: str, dim: bool) -> None:
        if text:
            self.console.print(text, style="dim" if dim else None, end="", markup=False, highlight=False,
                               soft_wrap=True)


def _safe_end(text: str) -> int:
    """len(text), less a trailing proper prefix of a think tag (it may be a tag's start)."""
    for k in range(len(THINK_CLOSE) - 1, 0, -1):
        tail = text[-k:]
        if THINK_OPEN.startswith(tail) or THINK_CLOSE.startswith(tail):
            return len(text) - k
    return len(text)


class ChatSession:
    """A conversation with one model: the history, and a streamed reply per user turn."""

    def __init__(self, model, tokenizer, settings: ChatSettings, context: int) -> None:
        self.model, self.tokenizer, self.settings, self.context = model, tokenizer, settings, context
        self.history: list[dict[str, str]] = []
        self.turn = 0

    def reset(self) -> None:
        self.history = []

    def reply(self, user_text: str, console: Console) -> str:
        """Stream the model's answer to `user_text` to `console`; returns it and keeps both
        in the history. The oldest turns are dropped if the prompt would not fit."""
        from dsctl.model.generate import stream

        self.history.append({"role": "user", "content": user_text})
        prompt = self._prompt()
        budget = max(1, min(self.settings.max_new_tokens, self.context - len(prompt)))
        renderer, ids = TraceRenderer(console), []
        for token in stream(self.model, prompt, max_new_tokens=budget, temperature=self.settings.temperature,
                            top_p=self.settings.top_p, stop_token_ids=[self.tokenizer.eos_id],
                            seed=self.settings.seed + self.turn):
            if token == self.tokenizer.eos_id:
                break
            ids.append(token)
            renderer.update(self.tokenizer.decode(ids))
        text = self.tokenizer.decode(ids)
        renderer.update(text, final=True)
        console.print()
        self.history.append({"role": "assistant", "content": text})
        self.turn += 1
        return text

    def _prompt(self) -> list[int]:
        """The history in the chat template, ending with the assistant's turn; whole turns
        are dropped from the front until at least one token of reply fits the context."""
        while True:
            ids, _ = self.tokenizer.encode_chat(self.history, add_generation_prompt=True)
            if len(ids) < self.context or len(self.history) <= 1:
                return ids[-(self.context - 1):]
            self.history = self.history[2:]


def chat_loop(session: ChatSession, lines: Iterable[str], console: Console, interactive: bool) -> int:
    """Answer each line of `lines` (commands: /reset, /exit); returns the replies given."""
    replies = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            session.reset()
            if interactive:
                console.print("[dim](history cleared)[/dim]")
            continue
        session.reply(line, console)
        replies += 1
    return replies


def terminal_lines(console: Console) -> Iterable[str]:
    """Lines typed at a `you>` prompt until end of input (Ctrl-D) or Ctrl-C."""
    while True:
        try:
            yield console.input("[bold]you>[/bold] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
