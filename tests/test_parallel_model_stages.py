"""Cutting DeepSeekV3 into pipeline stages keeps its function and its gradients."""

from __future__ import annotations

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.parallel.model_stages import lm_loss, split_deepseek_v3, split_layers


def tiny_model(layers: int = 4) -> DeepSeekV3:
    torch.manual_seed(0)
    # a large balance-loss weight makes a wrongly scaled auxiliary gradient visible
    cfg = ModelConfig.preset("tiny", num_hidden_layers=layers, seq_aux_loss_alpha=0.1, num_nextn_predict_layers=0)
    return DeepSeekV3(cfg)


def run_stages(stages, ids):
    h = ids
    for stage in stages:
        h = stage(h)
    return h


def test_split_layers_is_balanced_and_front_loaded():
    assert split_layers(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_layers(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="cannot cut 2 decoder layers into 3"):
        split_layers(2, 3)


def test_stages_compose_to_the_full_model_logits():
    model = tiny_model().eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(run_stages(split_deepseek_v3(model, 4), ids), model(ids))


def test_embedding_is_first_and_norm_head_last_and_every_parameter_once():
    model = tiny_model()
    stages = split_deepseek_v3(model, 2)
    assert stages[0].embed_tokens is model.embed_tokens and stages[0].lm_head is None
    assert stages[1].lm_head is model.lm_head and stages[1].norm is model.norm and stages[1].embed_tokens is None
    staged = [id(p) for s in stages for p in s.parameters()]
    assert len(staged) == len(set(staged))
    assert set(staged) == {id(p) for p in model.parameters()}


def test_stage_backward_with_balance_loss_matches_compute_loss():
    ids = torch.randint(0, 2048, (3, 10), generator=torch.Generator().manual_seed(1))
    ref_model = tiny_model().train()
    compute_loss(ref_model, ids, mtp_weight=0.0).loss.backward()
    model = tiny_model().train()
    stages = split_deepseek_v3(model, 3)
    lm_loss(run_stages(stages, ids), ids).backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
