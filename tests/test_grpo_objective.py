"""GRPO equations: group advantages, k3 KL, the clipped objective at token and sequence
level, clip-higher, and DAPO's soft overlong penalty."""

import math

import pytest
import torch

from dsctl.rl.objective import group_advantages, grpo_loss, k3_kl, overlong_penalty


def test_advantages_match_hand_computed_group():
    # Group 1: rewards 1, 0, 0, 1.1 -> mean 0.525, population std = sqrt(mean of squared deviations).
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.1, 0.1, 0.1, 0.1, 0.1])
    dev = [0.475, -0.525, -0.525, 0.575]
    unscaled = group_advantages(rewards, group_size=4)
    assert unscaled[:4].tolist() == pytest.approx(dev, rel=1e-5)
    scaled = group_advantages(rewards, group_size=4, scale=True, eps=1e-12)
    std = math.sqrt(sum(d * d for d in dev) / 4)
    assert scaled[:4].tolist() == pytest.approx([d / std for d in dev], rel=1e-5)
    for adv in (unscaled, scaled):
        assert adv[4:].abs().max() == 0.0  # a uniform group gets zero advantage, not NaN


def test_unscaled_advantages_weigh_a_format_only_difference_by_its_size():
    # Wrong answers, one of them malformed (reward 0) among well-formatted ones (0.1 each),
    # next to a group with one right answer: scaled, both groups push as hard; unscaled,
    # the format-only group moves its samples a tenth as far.
    rewards = torch.tensor([0.0, 0.1, 0.1, 0.1, 1.0, 0.0, 0.0, 0.0])
    scaled = group_advantages(rewards, group_size=4, scale=True)
    assert float(scaled[1]) == pytest.approx(-float(scaled[5]), rel=1e-2)
    unscaled = group_advantages(rewards, group_size=4)
    assert float(unscaled[1]) == pytest.approx(-float(unscaled[5]) / 10, rel=1e-5)


def test_advantages_reject_a_partial_group():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), group_size=4)


def test_k3_kl_is_zero_for_identical_policies_and_nonnegative_otherwise():
    torch.manual_seed(0)
    logp = torch.randn(4, 7)
    assert k3_kl(logp, logp).abs().max() == 0.0
    other = logp + torch.randn(4, 7)
    assert (k3_kl(logp, other) >= 0).all()
    assert k3_kl(logp, other).sum() > 0


def test_clipped_objective_matches_hand_computation():
    # One sequence, three tokens: ratios e^0.5 (clipped for A>0), 1, e^-0.5.
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.5, 0.0, -0.5], [0.5, 0.0, -0.5]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    parts = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, kl_coef=0.0)
    r = [math.exp(0.5), 1.0, math.exp(-0.5)]
    # A = +1: min(r·A, clip(r)·A) per token = [1.2, 1, e^-0.5]; A = -2 (last token masked):
    # min(-2r, -2 clip(r)) = [-2 e^0.5, -2].
    surrogate = [1.2, 1.0, r[2], -2 * r[0], -2.0]
    expected = -sum(surrogate) / 5  # token-level: every unmasked token weighs the same
    assert float(parts.loss) == pytest.approx(expected, rel=1e-6)
    assert parts.clip_fraction == pytest.approx(1 / 5)  # only token (0, 0) took the clipped branch


def test_kl_term_is_added_with_weight_beta():
    torch.manual_seed(1)
    logp, ref = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.ones(3, 4)
    adv = torch.zeros(3)
    parts = grpo_loss(logp, logp, ref, adv, mask, clip_eps=0.2, kl_coef=0.5)
    assert float(parts.loss) == pytest.approx(0.5 * float(k3_kl(logp, ref).mean()), rel=1e-6)
    assert parts.kl == pytest.approx(float(k3_kl(logp, ref).mean()), rel=1e-6)


def test_equal_rewards_give_zero_policy_gradient():
    torch.manual_seed(2)
    logits = torch.randn(4, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (4, 5))
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    adv = group_advantages(torch.full((4,), 0.7), group_size=4)
    # Reference = the policy itself: the KL term has zero gradient there too.
    parts = grpo_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(4, 5), clip_eps=0.2, kl_coef=0.04)
    parts.loss.backward()
    assert logits.grad.abs().max() == 0.0


def test_unequal_rewards_give_a_policy_gradient_toward_the_better_completion():
    logits = torch.zeros(2, 1, 3, requires_grad=True)
    targets = torch.tensor([[0], [1]])
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    adv = group_advantages(torch.tensor([1.0, 0.0]), group_size=2)
    grpo_loss(logp, logp.detach(), None, adv, torch.ones(2, 1), 0.2, 0.0).loss.backward()
    # Descending the loss raises the rewarded token's logit and lowers the other one.
    assert logits.grad[0, 0, 0] < 0 < logits.grad[1, 0, 1]


def test_kl_coefficient_without_reference_is_an_error():
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), 0.2, 0.1)


def test_micro_batches_with_a_shared_normalizer_add_up_to_the_whole_batch():
    torch.manual_seed(3)
    logits = torch.randn(6, 4, 9, requires_grad=True)
    targets = torch.randint(0, 9, (6, 4))
    mask = torch.tensor([[1, 1, 1, 0]] * 3 + [[1, 0, 0, 0]] * 3)
    adv, ref = torch.randn(6), torch.randn(6, 4) - 2

    def logp_of(rows):
        return torch.log_softmax(logits[rows], -1).gather(-1, targets[rows][..., None]).squeeze(-1)

    old = logp_of(slice(0, 6)).detach() + 0.1
    whole = grpo_loss(logp_of(slice(0, 6)), old, ref, adv, mask, 0.2, 0.04)
    (grad_whole,) = torch.autograd.grad(whole.loss, logits)
    n = float(mask.sum())
    parts = [grpo_loss(logp_of(slice(lo, lo + 2)), old[lo:lo + 2], ref[lo:lo + 2], adv[lo:lo + 2], mask[lo:lo + 2],
                       0.2, 0.04, n_tokens=n) for lo in (0, 2, 4)]
    (grad_split,) = torch.autograd.grad(sum(p.loss for p in parts), logits)
    torch.testing.assert_close(grad_split, grad_whole)
    assert sum(p.kl for p in parts) == pytest.approx(whole.kl, rel=1e-5)


def test_clip_higher_lets_a_raised_token_past_the_symmetric_bound():
    # ratio 1.25 with A > 0: the symmetric ε = 0.2 clips it at 1.2 (and stops its gradient),
    # DAPO's ε_high = 0.28 does not.
    logp = torch.full((1, 1), math.log(1.25), requires_grad=True)
    old, adv, mask = torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1)
    symmetric = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, kl_coef=0.0)
    assert symmetric.loss.item() == pytest.approx(-1.2) and symmetric.clip_fraction == 1.0
    (grad,) = torch.autograd.grad(symmetric.loss, logp)
    assert grad.abs().max() == 0.0
    higher = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, kl_coef=0.0, clip_eps_high=0.28)
    assert higher.loss.item() == pytest.approx(-1.25) and higher.clip_fraction == 0.0
    (grad,) = torch.autograd.grad(higher.loss, logp)
    assert float(grad) == pytest.approx(-1.25)  # d(−ratio)/d logp
    # ...and ratio 1.3 is clipped at 1 + ε_high, not at 1 + ε
    past = grpo_loss(torch.full((1, 1), math.log(1.3)), old, None, adv, mask, 0.2, 0.0, clip_eps_high=0.28)
    assert float(past.loss) == pytest.approx(-1.28) and past.clip_fraction == 1.0


def test_clip_higher_keeps_the_lower_bound_at_clip_eps():
    # ratio 0.75 with A < 0: clipped at 1 − ε_low = 0.8 either way
    logp, old, adv, mask = torch.full((1, 1), math.log(0.75)), torch.zeros(1, 1), -torch.ones(1), torch.ones(1, 1)
    for high in (0.0, 0.28):
        parts = grpo_loss(logp, old, None, adv, mask, 0.2, 0.0, clip_eps_high=high)
        assert float(parts.loss) == pytest.approx(0.8) and parts.clip_fraction == 1.0


def test_overlong_penalty_is_zero_then_linear_then_the_full_factor():
    # L_max = 20, L_cache = 8: free up to 12 tokens, a linear ramp to −factor at 20
    lengths = torch.tensor([5, 12, 14, 16, 19, 20])
    penalty = overlong_penalty(lengths, max_len=20, buffer=8, factor=0.5)
    assert penalty.tolist() == pytest.approx([0.0, 0.0, -0.125, -0.25, -0.4375, -0.5])
    assert overlong_penalty(lengths, max_len=20, buffer=0).abs().max() == 0.0  # off
    with pytest.raises(ValueError, match="exceeds"):
        overlong_penalty(lengths, max_len=20, buffer=21)


def test_sequence_aggregation_averages_each_completion_then_the_completions():
    # The hand-computed surrogates of test_clipped_objective_matches_hand_computation:
    # row 0 has three tokens, row 1 two (its last token masked).
    logp = torch.tensor([[0.5, 0.0, -0.5], [0.5, 0.0, -0.5]])
    adv, mask = torch.tensor([1.0, -2.0]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    parts = grpo_loss(logp, torch.zeros(2, 3), None, adv, mask, 0.2, 0.0, aggregation="sequence")
    row0 = (1.2 + 1.0 + math.exp(-0.5)) / 3
    row1 = (-2 * math.exp(0.5) - 2.0) / 2
    assert float(parts.loss) == pytest.approx(-(row0 + row1) / 2, rel=1e-6)
    token = grpo_loss(logp, torch.zeros(2, 3), None, adv, mask, 0.2, 0.0)
    assert float(token.loss) != pytest.approx(float(parts.loss))  # the two forms differ here
    assert parts.clip_fraction == pytest.approx(1 / 5)  # still a share of tokens


def test_unknown_loss_aggregation_is_an_error_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="token, sequence"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), 0.2, 0.0,
                  aggregation="mean")


def test_sequence_level_micro_batches_add_up_to_the_whole_batch():
    torch.manual_seed(4)
    logits = torch.randn(6, 4, 9, requires_grad=True)
    targets = torch.randint(0, 9, (6, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    adv, ref = torch.randn(6), torch.randn(6, 4) - 2

    def logp_of(rows):
        return torch.log_softmax(logits[rows], -1).gather(-1, targets[rows][..., None]).squeeze(-1)

    old = logp_of(slice(0, 6)).detach() + 0.1
    whole = grpo_loss(logp_of(slice(0, 6)), old, ref, adv, mask, 0.2, 0.04, aggregation="sequence")
    (grad_whole,) = torch.autograd.grad(whole.loss, logits)
    parts = [grpo_loss(logp_of(slice(lo, lo + 2)), old[lo:lo + 2], ref[lo:lo + 2], adv[lo:lo + 2], mask[lo:lo + 2],
                       0.2, 0.04, n_tokens=float(mask.sum()), aggregation="sequence", n_sequences=6)
             for lo in (0, 2, 4)]
    assert sum(p.loss.item() for p in parts) == pytest.approx(whole.loss.item(), rel=1e-5)
    (grad_split,) = torch.autograd.grad(sum(p.loss for p in parts), logits)
    torch.testing.assert_close(grad_split, grad_whole)
    for key in ("policy_loss", "kl", "clip_fraction", "ratio_mean"):
        assert sum(getattr(p, key) for p in parts) == pytest.approx(getattr(whole, key), rel=1e-5), key
