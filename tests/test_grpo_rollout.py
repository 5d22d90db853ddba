"""GRPO rollout plumbing: batch layout, left-padded log-prob scoring, per-step sampling."""

import torch

from dsctl.model import DeepSeekV3, ModelConfig, generate
from dsctl.rl.rollout import build_batch, completion_logprobs, step_problems, step_seed
from dsctl.tasks import split_problems

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16]]
COMPLETIONS = [[20, 21, 22], [30], [40, 41, 42, 43, 44]]


def _model() -> DeepSeekV3:
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny")).eval()


def _row_logprobs(model, prompt, completion):
    """Reference: the row alone, no padding, log-softmax of the full forward."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0].float(), -1)
    return torch.stack([logp[len(prompt) + t - 1, c] for t, c in enumerate(completion)])


def test_batch_left_pads_prompts_and_right_pads_completions():
    batch = build_batch(PROMPTS, COMPLETIONS, pad_id=0)
    assert batch.prompt_len == 7 and batch.input_ids.shape == (3, 12)
    assert batch.input_ids[1, 5:8].tolist() == [3, 4, 30]  # prompt ends at column P, completion starts there
    assert batch.attention_mask[1].tolist() == [0] * 5 + [1, 1, 1] + [0] * 4
    assert batch.completion_mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_left_padded_scoring_matches_each_row_scored_alone():
    model = _model()
    batch = build_batch(PROMPTS, COMPLETIONS, pad_id=0)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch)
    for row, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        torch.testing.assert_close(logp[row, :len(c)], _row_logprobs(model, p, c), atol=1e-5, rtol=1e-5)


def test_scoring_agrees_with_the_cached_sampler():
    """Greedy tokens from the latent-cache sampler are the argmax of the scored distribution."""
    model = _model()
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=0)
    batch = build_batch(PROMPTS, out.tokens, pad_id=0)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch)
        full = model(batch.input_ids, attention_mask=batch.attention_mask)[:, batch.prompt_len - 1:-1]
    real = batch.completion_mask.bool()
    ids = batch.input_ids[:, batch.prompt_len:]
    assert torch.equal(full.argmax(-1)[real], ids[real])
    # ...so each sampled token's scored log-prob is the maximum of its distribution.
    best = torch.log_softmax(full.float(), -1).max(-1).values
    torch.testing.assert_close(logp[real], best[real], atol=1e-5, rtol=1e-5)


def test_step_problems_are_a_function_of_seed_and_step():
    pool = split_problems("arithmetic", "answer_only", 50, seed=0)
    a = step_problems(pool, 4, seed=3, step=7)
    assert a == step_problems(pool, 4, seed=3, step=7)
    assert len({p.id for p in a}) == 4
    assert a != step_problems(pool, 4, seed=3, step=8) and a != step_problems(pool, 4, seed=4, step=7)
    assert step_seed(3, 7) != step_seed(3, 8) and step_seed(3, 7) != step_seed(4, 7)
