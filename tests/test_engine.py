"""The continuous-batching engine: requests that join mid-decode give what they give
alone, a cancelled request leaves at once, and a failing step fails only its batch."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig, generate
from dsctl.serve.engine import DecodeEngine, SamplingParams


@pytest.fixture(scope="module")
def model() -> DeepSeekV3:
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny", vocab_size=300)).eval()


class Collector:
    def __init__(self, count: int) -> None:
        self.events: dict[int, list] = {i: [] for i in range(count)}
        self.left = count
        self.all_done = threading.Event()

    def __call__(self, i: int):
        def on_event(event) -> None:
            self.events[i].append(event)
            if event[0] in ("done", "error"):
                self.left -= 1
                if not self.left:
                    self.all_done.set()
        return on_event

    def tokens(self, i: int) -> list[int]:
        return [value for kind, value in self.events[i] if kind == "token"]


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 2, 12)]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_requests_joining_mid_decode_give_what_they_give_alone(model, temperature):
    engine = DecodeEngine(model, lambda ids: "", max_batch=4)
    try:
        got = Collector(len(prompts()))
        for i, prompt in enumerate(prompts()):  # staggered: later ones join a running batch
            engine.submit(prompt, SamplingParams(max_tokens=10 + i, temperature=temperature, seed=i), got(i))
            time.sleep(0.01 * (i % 3))
        assert got.all_done.wait(60)
    finally:
        engine.close()
    assert engine.largest_batch >= 2
    for i, prompt in enumerate(prompts()):
        alone = generate(model, [prompt], max_new_tokens=10 + i, temperature=temperature, seed=i).tokens[0]
        assert got.tokens(i) == alone, i
        assert got.events[i][-1] == ("done", "length")


def test_greedy_rows_decode_with_mtp_drafts_beside_sampled_rows_and_give_what_they_give_alone(model):
    engine = DecodeEngine(model, lambda ids: "", max_batch=4)
    temperature = [0.0, 0.9, 0.0, 0.9, 0.0, 0.0]
    try:
        got = Collector(len(prompts()))
        for i, prompt in enumerate(prompts()):
            engine.submit(prompt, SamplingParams(max_tokens=12, temperature=temperature[i], seed=i), got(i))
            time.sleep(0.01 * (i % 3))
        assert got.all_done.wait(60)
    finally:
        engine.close()
    assert engine.speculative and engine.drafts_proposed > 0
    for i, prompt in enumerate(prompts()):
        alone = generate(model, [prompt], max_new_tokens=12, temperature=temperature[i], seed=i).tokens[0]
        assert got.tokens(i) == alone, i


def test_an_accepted_draft_is_a_second_token_from_the_same_step():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=300)).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every position's greedy token is 0, and so is every draft
    engine = DecodeEngine(model, lambda ids: "")
    try:
        got = Collector(1)
        engine.submit(prompts()[0], SamplingParams(max_tokens=20, temperature=0.0), got(0))
        assert got.all_done.wait(60)
    finally:
        engine.close()
    assert got.tokens(0) == [0] * 20
    # The prefill gives token 1; each verify step then gives two.
    assert engine.steps == 10 and engine.drafts_accepted == engine.drafts_proposed == 10


def test_a_cancelled_request_leaves_the_batch_and_the_others_finish(model):
    engine = DecodeEngine(model, lambda ids: "")
    try:
        got = Collector(2)
        slow = engine.submit(prompts()[0], SamplingParams(max_tokens=500), got(0))
        engine.submit(prompts()[1], SamplingParams(max_tokens=20), got(1))
        while len(got.tokens(0)) < 3:
            time.sleep(0.005)
        slow.cancel()
        assert got.all_done.wait(60)
    finally:
        engine.close()
    assert got.events[0][-1] == ("done", "cancelled") and len(got.tokens(0)) < 500
    assert got.events[1][-1] == ("done", "length") and len(got.tokens(1)) == 20


def test_a_failing_step_fails_its_requests_and_the_loop_serves_the_next(model, monkeypatch):
    engine = DecodeEngine(model, lambda ids: "")
    calls = {"n": 0}
    outputs = model.outputs  # every pass goes through it (forward too)

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (1, 4):  # the first request's prefill, then the second's second step
            raise RuntimeError("simulated kernel failure")
        return outputs(*args, **kwargs)

    monkeypatch.setattr(model, "outputs", flaky)
    try:
        outcomes = []
        for prompt in prompts()[:3]:
            got = Collector(1)
            engine.submit(prompt, SamplingParams(max_tokens=4), got(0))
            assert got.all_done.wait(60)
            outcomes.append(got)
    finally:
        engine.close()
    failure = ("error", "RuntimeError: simulated kernel failure")
    assert outcomes[0].events[0] == [failure]  # its prefill failed: nothing was sampled
    assert outcomes[1].events[0][-1] == failure and len(outcomes[1].tokens(0)) == 2  # a decode step failed
    assert outcomes[2].events[0][-1] == ("done", "length") and len(outcomes[2].tokens(0)) == 4
