"""RoPE/YaRN frequencies and temperature against closed forms."""

import math

import torch

from dsctl.model import ModelConfig
from dsctl.model.rope import RotaryEmbedding, apply_rope, rope_frequencies, softmax_scale

YARN = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}


def test_plain_rope_frequencies_are_theta_powers():
    c = ModelConfig(qk_rope_head_dim=8, rope_theta=10000.0)
    inv_freq, scale = rope_frequencies(c)
    expected = torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)])
    torch.testing.assert_close(inv_freq, expected)
    assert scale == 1.0


def test_yarn_keeps_fast_pairs_interpolates_slow_pairs_and_ramps_between():
    dim, base, s, orig = 64, 10000.0, 40.0, 4096
    c = ModelConfig(qk_rope_head_dim=dim, rope_theta=base, rope_scaling=YARN, max_position_embeddings=orig * 40)
    inv_freq, _ = rope_frequencies(c)
    plain = torch.tensor([base ** (-2 * i / dim) for i in range(dim // 2)], dtype=torch.float64)
    # Closed form: pair i turns orig·θ_i/(2π) times over the original context.
    low = math.floor(dim * math.log(orig / (32 * 2 * math.pi)) / (2 * math.log(base)))
    high = math.ceil(dim * math.log(orig / (1 * 2 * math.pi)) / (2 * math.log(base)))
    for i in range(dim // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        expected = plain[i] * (1 - ramp) + plain[i] / s * ramp
        assert math.isclose(inv_freq[i].item(), expected.item(), rel_tol=1e-6), i
    assert inv_freq[0] == plain[0].float()  # the fastest pair is untouched
    assert math.isclose(inv_freq[-1].item(), plain[-1].item() / s, rel_tol=1e-6)  # the slowest is divided by s


def test_yarn_softmax_scale_uses_mscale_squared():
    c = ModelConfig(qk_nope_head_dim=16, qk_rope_head_dim=8, rope_scaling=YARN)
    m = 0.1 * 1.0 * math.log(40.0) + 1.0
    assert math.isclose(softmax_scale(c), 24 ** -0.5 * m * m, rel_tol=1e-12)
    assert rope_frequencies(c)[1] == 1.0  # mscale == mscale_all_dim: cos/sin unscaled


def test_yarn_without_mscale_all_dim_scales_cos_sin():
    rs = dict(YARN, mscale_all_dim=0)
    c = ModelConfig(rope_scaling=rs)
    assert math.isclose(rope_frequencies(c)[1], 0.1 * math.log(40.0) + 1.0)
    assert softmax_scale(c) == c.qk_head_dim ** -0.5


def test_rotation_is_relative_positions_only():
    torch.manual_seed(0)
    c = ModelConfig(qk_rope_head_dim=8)
    rot = RotaryEmbedding(c)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        cq, sq = rot(torch.tensor([[pq]]), torch.float32)
        ck, sk = rot(torch.tensor([[pk]]), torch.float32)
        return (apply_rope(q, cq, sq, True) * apply_rope(k, ck, sk, True)).sum()

    torch.testing.assert_close(score(5, 2), score(13, 10))
    assert not torch.allclose(score(5, 2), score(5, 4))
