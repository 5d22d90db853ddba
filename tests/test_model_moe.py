"""DeepSeekMoE routing, dispatch and auxiliary-loss-free balancing."""

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig
from dsctl.model import moe as moe_module
from dsctl.model.moe import MoE, sequence_balance_loss


def _moe(**overrides) -> MoE:
    torch.manual_seed(0)
    kwargs = dict(n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2) | overrides
    c = ModelConfig.preset("tiny", **kwargs)
    moe = MoE(c)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return moe


def test_bias_changes_selection_but_not_gate_values():
    moe = _moe(routed_scaling_factor=2.5, norm_topk_prob=False)
    x = torch.randn(64, moe.config.hidden_size)
    scores, ids0, w0 = moe.gate(x)
    moe.gate.e_score_correction_bias[ids0[0, 0]] = -10.0  # push token 0's first choice out
    _, ids1, w1 = moe.gate(x)
    assert not torch.equal(ids0, ids1)
    # Every gate weight is the *original* sigmoid score of the chosen expert, times the scale.
    torch.testing.assert_close(w1, scores.gather(1, ids1) * 2.5)
    torch.testing.assert_close(w0, scores.gather(1, ids0) * 2.5)


def test_normalized_gates_sum_to_routed_scaling_factor():
    moe = _moe(routed_scaling_factor=2.5)
    _, _, w = moe.gate(torch.randn(16, moe.config.hidden_size))
    torch.testing.assert_close(w.sum(-1), torch.full((16,), 2.5))


def test_group_limited_routing_uses_at_most_topk_group_groups():
    moe = _moe()
    _, ids, _ = moe.gate(torch.randn(256, moe.config.hidden_size))
    groups = ids // (moe.config.n_routed_experts // moe.config.n_group)
    assert max(len(set(row.tolist())) for row in groups) <= moe.config.topk_group


def test_sorted_dispatch_equals_per_token_reference():
    moe = _moe().eval()
    x = torch.randn(2, 7, moe.config.hidden_size)
    y, _ = moe(x)
    flat = x.reshape(-1, x.shape[-1])
    _, ids, w = moe.gate(flat)
    ref = torch.stack([
        sum(w[t, j] * moe.experts[int(ids[t, j])](flat[t]) for j in range(ids.shape[1])) + moe.shared_experts(flat[t])
        for t in range(flat.shape[0])])
    torch.testing.assert_close(y.reshape(-1, x.shape[-1]), ref, rtol=1e-5, atol=1e-6)


def test_load_is_counted_in_training_only_and_padding_is_ignored():
    moe = _moe()
    x = torch.randn(2, 5, moe.config.hidden_size)
    moe.eval()
    moe(x)
    assert moe.expert_load.sum() == 0
    moe.train()
    mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
    moe(x, mask)
    assert moe.expert_load.sum() == 8 * moe.config.num_experts_per_tok


def test_bias_updates_reduce_max_load_violation_of_a_skewed_router():
    moe = _moe(n_group=1, topk_group=1).train()
    with torch.no_grad():
        moe.gate.weight[:2] *= 4.0  # experts 0 and 1 get extreme affinities: most tokens pick them
    x = torch.randn(1, 256, moe.config.hidden_size)
    violations = []
    for _ in range(30):
        with torch.no_grad():
            moe(x)
        violations.append(moe.max_load_violation())
        moe.update_bias(speed=0.02)
    assert violations[0] > 0.5
    assert min(violations[-5:]) < 0.5 * violations[0]
    assert moe.expert_load.sum() == 0  # counters reset by each update


def test_router_load_stats_reports_per_expert_load():
    c = ModelConfig.preset("tiny")
    model = DeepSeekV3(c).train()
    model(torch.randint(0, c.vocab_size, (2, 6)))
    stats = model.router_load_stats()
    assert len(stats["expert_load"]) == len(model.moe_layers())
    assert sum(stats["expert_load"][0]) == 12 * c.num_experts_per_tok
    assert stats["max_load_violation"] >= 0


def test_balance_loss_is_minimal_for_uniform_routing_and_larger_when_skewed():
    E, T = 4, 8  # experts, tokens; each token picks 2 experts
    uniform = torch.full((1, T, E), 0.5)
    ids = torch.tensor([[0, 1], [2, 3]] * (T // 2))[None]
    skewed_ids = torch.tensor([[0, 1]] * T)[None]
    skewed_scores = torch.tensor([0.9, 0.9, 0.1, 0.1]).expand(1, T, E)
    assert torch.isclose(sequence_balance_loss(uniform, ids, None), torch.tensor(1.0))
    assert sequence_balance_loss(skewed_scores, skewed_ids, None) > 1.5


@pytest.mark.parametrize("tokens", [(3, 5), (1, 1)], ids=["grouped GEMM", "loop over the chosen experts"])
def test_inference_fast_paths_match_training_path_and_see_weight_updates(tokens):
    moe = _moe().eval()
    x = torch.randn(*tokens, moe.config.hidden_size)
    with torch.no_grad():
        fast, _ = moe(x)  # stacked expert weights: grouped GEMM, or a loop for one token
    slow, _ = moe(x)  # grad enabled: one call per expert module
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for e in moe.experts:
            e.down_proj.weight.mul_(2.0)  # in place, like an optimizer step
        again, _ = moe(x)
    torch.testing.assert_close(again - moe.shared_experts(x), 2 * (fast - moe.shared_experts(x)), rtol=1e-5, atol=1e-6)


def test_router_bias_and_load_counts_keep_full_precision_in_a_bf16_model():
    model = DeepSeekV3(ModelConfig.preset("tiny")).to(torch.bfloat16).train()
    moe = model.moe_layers()[0]
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    assert moe.expert_load.dtype == torch.long
    model(torch.randint(0, 2048, (2, 300)))
    assert int(moe.expert_load.sum()) == 600 * model.config.num_experts_per_tok
    before = moe.gate.e_score_correction_bias.clone()
    model.update_router_biases(speed=0.001)
    assert (moe.gate.e_score_correction_bias - before).abs().max() == pytest.approx(0.001)


@pytest.mark.parametrize("tokens", [1, 2, 3])
def test_up_to_two_decoding_tokens_run_their_experts_in_turn_with_the_grouped_result(tokens, monkeypatch):
    # One decoding token, or a speculative verify step's two (last + draft), skip the sort and
    # the grouped GEMM that pays for every expert; more tokens take it. The output is the same.
    moe = _moe().eval()
    x = torch.randn(1, tokens, moe.experts[0].gate_proj.in_features)
    grouped_calls = []
    grouped = moe._grouped_experts
    monkeypatch.setattr(moe, "_grouped_experts", lambda *a: grouped_calls.append(1) or grouped(*a))
    with torch.no_grad():
        default, _ = moe(x)
        took_grouped = bool(grouped_calls)
        monkeypatch.setattr(moe_module, "FEW_TOKENS", 0)
        sorted_grouped, _ = moe(x)
    assert took_grouped == (tokens > 2)
    torch.testing.assert_close(default, sorted_grouped, rtol=0, atol=1e-6)
