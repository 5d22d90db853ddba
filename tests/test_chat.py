"""`dsctl chat`: streamed replies equal `generate`'s, the think trace is dimmed, history and
/reset work, and piped stdin is answered line by line through the real CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from dsctl.model.generate import generate, stream
from dsctl.model.hf import load_hf
from dsctl.serve.chat import ChatSession, ChatSettings, TraceRenderer, chat_loop
from dsctl.tokenizer import Tokenizer
from tests.sft_support import make_checkpoint, make_tokenizer

DIM = "\x1b[2m"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    make_tokenizer(root / "tok")
    return make_checkpoint(root / "ckpt", root / "tok", seed=3)


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="standard", width=200), out


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_stream_yields_what_generate_returns_for_the_same_seed(checkpoint, temperature):
    model = load_hf(checkpoint)
    prompt = Tokenizer.load(checkpoint).chat_prompt("What is 36 + 48?")
    streamed = list(stream(model, prompt, max_new_tokens=12, temperature=temperature, top_p=0.9, seed=5))
    batch = generate(model, [prompt], max_new_tokens=12, temperature=temperature, top_p=0.9, seed=5)
    assert streamed == batch.tokens[0] and len(streamed) == 12


def test_the_think_trace_is_dimmed_even_when_a_tag_arrives_in_pieces():
    console, out = _terminal()
    renderer = TraceRenderer(console)
    reply = "<think>36 + 48 = 84</think><answer>84</answer>"
    for end in range(1, len(reply) + 1):  # one character at a time: every tag is split
        renderer.update(reply[:end])
    renderer.update(reply, final=True)
    text = out.getvalue()
    assert text.replace(DIM, "").replace("\x1b[0m", "") == reply
    dimmed = "".join(part.split("\x1b[0m")[0] for part in text.split(DIM)[1:])
    assert dimmed == "<think>36 + 48 = 84</think>"


def test_a_session_keeps_the_history_in_the_chat_template_and_reset_forgets_it(checkpoint):
    model, tokenizer = load_hf(checkpoint), Tokenizer.load(checkpoint)
    session = ChatSession(model, tokenizer, ChatSettings(temperature=0.0, max_new_tokens=6), context=128)
    console, out = _terminal()
    assert chat_loop(session, ["What is 2 + 2?", "And 3 + 3?"], console, interactive=False) == 2
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    second_prompt = tokenizer.encode_chat(session.history[:3], add_generation_prompt=True)[0]
    want = tokenizer.decode([t for t in stream(model, second_prompt, max_new_tokens=6, temperature=0.0, seed=1)
                             if t != tokenizer.eos_id])
    assert session.history[3]["content"] == want
    chat_loop(session, ["/reset", "/exit", "never answered"], console, interactive=False)
    assert session.history == []


def test_a_long_history_drops_its_oldest_turns_to_fit_the_context(checkpoint):
    session = ChatSession(load_hf(checkpoint), Tokenizer.load(checkpoint), ChatSettings(max_new_tokens=4), context=48)
    console, _ = _terminal()
    chat_loop(session, [f"Tell me about the number {i} and its neighbours" for i in range(6)], console, False)
    assert 2 <= len(session.history) < 12
    assert session.history[-2]["content"] == "Tell me about the number 5 and its neighbours"


def test_piped_stdin_is_answered_once_per_line_through_the_cli(checkpoint, tmp_path):
    env = {**os.environ, "DSCTL_WORKDIR": str(tmp_path / "work"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "dsctl.cli", "chat", str(checkpoint), "--temperature", "0", "--max-new-tokens", "5"]
    runs = [subprocess.run(cmd, input="What is 36 + 48?\n/reset\nWhat is 1 + 2?\n", capture_output=True, text=True,
                           env=env, timeout=120) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout  # greedy: the same session twice
    assert len(runs[0].stdout.splitlines()) == 2
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not weights")
    bad = subprocess.run([*cmd[:4], str(tmp_path / "notes")], input="hi\n", capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode != 0 and "not a checkpoint with a tokenizer" in " ".join(bad.stderr.split())
