"""MLA: explicit, absorbed and folded paths agree, the cache is latent-only, attention is causal."""

import pytest
import torch

from dsctl.model import DeepSeekV3, LatentCache, ModelConfig

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 1.0}


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": 16}, {"rope_scaling": YARN, "rope_interleave": False}])
def test_absorbed_attention_matches_explicit_on_prompts(overrides):
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", **overrides)).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    with torch.no_grad():
        explicit = model(ids, attn_impl="explicit")
        absorbed = model(ids, attn_impl="absorbed")
    rel = (explicit - absorbed).abs().max() / explicit.abs().max()
    assert rel <= 1e-5


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": 16}, {"rope_scaling": YARN, "rope_interleave": False}])
def test_folded_weights_compute_the_absorbed_attention(overrides):
    torch.manual_seed(3)
    model = DeepSeekV3(ModelConfig.preset("tiny", **overrides)).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    with torch.no_grad():
        absorbed = model(ids, attn_impl="absorbed")
        folded = model(ids, attn_impl="folded")
    assert model.layers[0].self_attn.__dict__.get("_folded") is not None  # the folded path ran
    assert (absorbed - folded).abs().max() / absorbed.abs().max() <= 1e-5


def test_folded_weights_follow_a_weight_update_and_step_aside_for_autograd():
    torch.manual_seed(4)
    model = DeepSeekV3(ModelConfig.preset("tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        model(ids, attn_impl="folded")
        for p in model.parameters():  # an optimizer step: in place, same storage
            p.add_(0.01 * torch.randn_like(p))
        after = model(ids, attn_impl="folded")
        assert torch.allclose(after, model(ids, attn_impl="absorbed"), rtol=1e-4, atol=1e-5)
    # Under autograd "folded" is "absorbed", so gradients reach the real projections.
    model(ids, attn_impl="folded").sum().backward()
    assert model.layers[0].self_attn.kv_b_proj.weight.grad.abs().sum() > 0


def test_folding_is_skipped_where_it_would_grow_the_weights():
    # DeepSeek-V3's proportions: kv_lora_rank 4x the nope head dim.
    model = DeepSeekV3(ModelConfig.preset("tiny", kv_lora_rank=64, qk_nope_head_dim=8)).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with torch.no_grad():
        folded, absorbed = model(ids, attn_impl="folded"), model(ids, attn_impl="absorbed")
    assert torch.equal(folded, absorbed)
    assert "_folded" not in model.layers[0].self_attn.__dict__


def test_absorbed_decode_with_cache_matches_explicit_full_forward():
    torch.manual_seed(1)
    model = DeepSeekV3(ModelConfig.preset("tiny", q_lora_rank=16)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    cache = LatentCache(model.config, model.config.num_hidden_layers, 2, 16)
    with torch.no_grad():
        full = model(ids, attn_impl="explicit")
        steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(4, 9)]
    decoded = torch.cat(steps, dim=1)
    assert (full - decoded).abs().max() / full.abs().max() <= 1e-5
    assert cache.length == 9


def test_cache_holds_only_c_kv_and_k_pe_per_token_per_layer():
    c = ModelConfig.preset("tiny")
    model = DeepSeekV3(c).eval()
    cache = LatentCache(c, c.num_hidden_layers, batch_size=1, max_slots=32)
    per_token = sum(t[:, 0, 0].numel() for t in (cache.c_kv, cache.k_pe))
    assert per_token == c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim)
    assert cache.bytes_per_token() == c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    with torch.no_grad():
        model(torch.randint(0, c.vocab_size, (1, 5)), cache=cache)
    assert cache.c_kv[:, :, :5].abs().sum() > 0 and cache.c_kv[:, :, 5:].abs().sum() == 0


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    torch.manual_seed(2)
    model = DeepSeekV3(ModelConfig.preset("tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % model.config.vocab_size
    for impl in ("explicit", "absorbed", "folded"):
        with torch.no_grad():
            a, b = model(ids, attn_impl=impl), model(changed, attn_impl=impl)
        # Identical up to float reassociation (masked keys still enter the matmuls).
        torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
        assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_full_cache_raises_a_clear_error():
    c = ModelConfig.preset("tiny")
    cache = LatentCache(c, c.num_hidden_layers, 1, 4)
    with pytest.raises(ValueError, match="full"):
        DeepSeekV3(c)(torch.zeros(1, 5, dtype=torch.long), cache=cache)
