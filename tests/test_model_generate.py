"""Generation: batched greedy equals step-by-step argmax, sampling is seeded, stops work,
MTP self-speculative decoding reproduces greedy exactly."""

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig, generate

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16]]


def _model(seed: int = 0, **overrides) -> DeepSeekV3:
    torch.manual_seed(seed)
    return DeepSeekV3(ModelConfig.preset("tiny", **overrides)).eval()


def _argmax_reference(model: DeepSeekV3, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_batched_greedy_equals_step_by_step_argmax_of_the_full_forward():
    model = _model(q_lora_rank=16)
    result = generate(model, PROMPTS, max_new_tokens=6, temperature=0)
    assert result.tokens == [_argmax_reference(model, p, 6) for p in PROMPTS]
    assert result.finish_reasons == ["length"] * 3


def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds():
    model = _model()
    kwargs = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=100)
    a = generate(model, PROMPTS, seed=1, **kwargs).tokens
    assert a == generate(model, PROMPTS, seed=1, **kwargs).tokens
    assert a != generate(model, PROMPTS, seed=2, **kwargs).tokens


def test_top_k_1_sampling_is_greedy():
    model = _model()
    greedy = generate(model, PROMPTS, max_new_tokens=6, temperature=0).tokens
    assert generate(model, PROMPTS, max_new_tokens=6, temperature=0.7, top_k=1, seed=5).tokens == greedy


def test_stop_token_and_stop_string_end_a_row_and_are_reported():
    model = _model()
    greedy = generate(model, PROMPTS, max_new_tokens=8, temperature=0).tokens
    stop_tok = greedy[0][2]
    r = generate(model, PROMPTS, max_new_tokens=8, temperature=0, stop_token_ids=[stop_tok])
    assert r.tokens[0] == greedy[0][: greedy[0].index(stop_tok) + 1] and r.finish_reasons[0] == "stop"

    def decode(ids):
        return " ".join(f"t{i}" for i in ids)

    target = f"t{greedy[1][3]}"
    r = generate(model, PROMPTS, max_new_tokens=8, temperature=0, stop_strings=[target], decode=decode)
    cut = next(i for i in range(8) if target in decode(greedy[1][: i + 1]))
    assert r.tokens[1] == greedy[1][: cut + 1] and r.finish_reasons[1] == "stop"
    assert r.texts[1].endswith(target)


def test_speculative_decoding_with_all_drafts_rejected_equals_greedy():
    # Random MTP weights: every draft is wrong, so every step leaves a masked cache slot.
    model = _model(seed=3)
    greedy = generate(model, PROMPTS, max_new_tokens=12, temperature=0)
    spec = generate(model, PROMPTS, max_new_tokens=12, temperature=0, speculative=True)
    assert spec.tokens == greedy.tokens
    assert 0.0 <= spec.acceptance_rate < 0.5


def _counting_model() -> DeepSeekV3:
    """A model whose main head counts (predicts x+1) and whose MTP drafts t+2 right only
    when the next token is odd, so rows accept and reject drafts at different steps."""
    model = _model(vocab_size=64, hidden_size=64)
    d = 64
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(1e-3)  # blocks still attend and route, but barely move the residual
        model.embed_tokens.weight.copy_(torch.eye(d))
        model.lm_head.weight.copy_(torch.roll(torch.eye(d), 1, dims=0))  # row k = e_{k-1}
        perm = torch.tensor([j if j % 2 else (j + 3) % d for j in range(d)])
        eh = torch.zeros(d, 2 * d)
        eh[perm, torch.arange(d)] = 1 / 8  # enorm(e_j) = 8 e_j  ->  e_perm(j)
        model.mtp[0].eh_proj.weight.copy_(eh)
    return model


def test_speculative_decoding_accepting_drafts_equals_greedy_with_fewer_passes():
    model = _counting_model()
    prompts = [[5, 6, 7], [30, 31, 32, 33, 34], [60, 61]]
    greedy = generate(model, prompts, max_new_tokens=16, temperature=0)
    assert greedy.tokens[0][:4] == [8, 9, 10, 11]  # the construction counts
    spec = generate(model, prompts, max_new_tokens=16, temperature=0, speculative=True)
    assert spec.tokens == greedy.tokens
    assert 0.0 < spec.acceptance_rate < 1.0  # some drafts held, some did not
    assert spec.forward_passes < greedy.forward_passes


def test_generate_restores_training_mode_and_counts_no_load():
    model = _model().train()
    generate(model, PROMPTS, max_new_tokens=3, temperature=0)
    assert model.training and all(m.expert_load.sum() == 0 for m in model.moe_layers())


def test_generate_rejects_unusable_arguments_with_a_reason():
    import pytest

    model = _model()
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="decode"):
        generate(model, [[1]], max_new_tokens=2, stop_strings=["x"])
    with pytest.raises(ValueError, match="temperature=0"):
        generate(model, [[1]], max_new_tokens=2, temperature=0.5, speculative=True)


def test_the_stop_rule_reads_only_the_tail_that_can_hold_a_stop_string():
    from dsctl.model.generate import StopRule

    seen = []

    def decode(ids):
        seen.append(len(ids))
        return "".join(chr(ord("a") + i % 26) for i in ids)

    rule = StopRule(10_000, frozenset({99}), ("xyz",), decode)
    tokens = []
    reasons = []
    for t in [*range(20)] * 50 + [23, 24, 25]:  # ... then "x", "y", "z"
        tokens.append(t)
        reasons.append(rule.finish(tokens))
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    assert max(seen) == rule.tail == 13  # never the whole completion: the check costs the same at any length
    assert rule.finish([5, 99]) == "stop" and StopRule(2).finish([1, 2]) == "length"
    with pytest.raises(ValueError, match="stop_strings need a decode"):
        StopRule(4, stop_strings=("x",))


def test_inverse_cdf_draws_each_token_with_its_probability_and_never_a_zero_one():
    from dsctl.model.generate import inverse_cdf, sample_next

    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0]])
    # Interval edges: [0, .5) -> 0, [.5, .7) -> 2, [.7, 1) -> 3; token 1 (and the zero tail) never.
    u = torch.tensor([[0.0], [0.4999], [0.5], [0.6999], [0.7], [float.fromhex("0x1.fffffffffffffp-1")]],
                     dtype=torch.float64)
    assert inverse_cdf(probs.expand(6, 5), u).tolist() == [0, 0, 2, 2, 3, 3]
    # The top of [0, 1) with a total that rounds below 1 still lands on a real token, and
    # the bottom skips leading zeros.
    assert inverse_cdf(torch.tensor([[0.3, 0.3, 0.3, 0.0]]), u[-1:]).tolist() == [2]
    assert inverse_cdf(torch.tensor([[0.0, 0.0, 1.0]]), u[:1]).tolist() == [2]
    with pytest.raises(ValueError, match="non-finite"):
        inverse_cdf(torch.tensor([[0.5, float("nan")]]), u[:1])

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")]).expand(40_000, 5)
    draws = sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / 40_000
    expected = logits[0].softmax(-1).double()
    # 4 binomial standard errors per token: a wrong interval shows, sampling noise does not.
    assert torch.all((freq - expected).abs() <= 4 * (expected * (1 - expected) / 40_000).sqrt() + 1e-12)
    assert freq[4] == 0


def test_nucleus_keeps_the_tokens_a_full_sort_keeps_for_peaked_and_flat_rows():
    from dsctl.model.generate import NUCLEUS_PREFIXES, nucleus

    def by_full_sort(probs, top_p):
        ranked, order = probs.sort(-1, descending=True)
        return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ranked.cumsum(-1) - ranked <= top_p)

    g = torch.Generator().manual_seed(0)
    # Rows from one-token-sure to near-uniform, so nuclei end inside each ranked prefix and
    # past the last (ranked in full); and a vocabulary smaller than the longer prefix.
    scales = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]).repeat_interleave(8).unsqueeze(-1)
    short, long = NUCLEUS_PREFIXES
    for vocab in (1024, (short + long) // 2):
        probs = (torch.randn(len(scales), vocab, generator=g) * scales).softmax(-1)
        # One token at 0.5 over a near-flat tail (no ties, whose order a sort leaves open):
        # its top token says the longer prefix may reach top_p, and the nucleus runs past it.
        probs[:4] = 0.5 * (torch.randn(4, vocab, generator=g) * 0.1).softmax(-1)
        probs[:4, 7] = 0.5
        for top_p in (0.5, 0.9, 0.95):
            keep = nucleus(probs, top_p)
            assert torch.equal(keep, by_full_sort(probs, top_p))
            assert keep.any(-1).all()
            flat = probs[4:16]  # a batch of flat rows only
            assert torch.equal(nucleus(flat, top_p), by_full_sort(flat, top_p))
        if vocab > long:  # every path was taken
            sizes = nucleus(probs, 0.95).sum(-1)
            assert (sizes <= short).any() and ((sizes > short) & (sizes <= long)).any() and (sizes > long).any()
