"""Cutting DeepSeekV3 into pipeline stages keeps its loss and its gradients (MTP, packed
documents and the balance loss included), and a rank can build only its stages."""

from __future__ import annotations

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.parallel.pipeline_stages import (
    build_model,
    split_deepseek_v3,
    split_layers,
    stage_kwargs,
    stage_of_parameter,
    stage_parts,
    tied_parameter_names,
)


def tiny_config(layers: int = 4, mtp: int = 1) -> ModelConfig:
    # a large balance-loss weight makes a wrongly scaled auxiliary gradient visible
    return ModelConfig.preset("tiny", num_hidden_layers=layers, seq_aux_loss_alpha=0.1,
                              num_nextn_predict_layers=mtp, mtp_loss_weight=0.3)


def tiny_model(layers: int = 4, mtp: int = 1, parts=None) -> DeepSeekV3:
    torch.manual_seed(0)
    return build_model(tiny_config(layers, mtp), parts)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2048, (3, 10), generator=g)
    doc_ids = torch.tensor([[0] * 4 + [1] * 6, [0] * 10, [0] * 2 + [1] * 3 + [2] * 5])
    return ids, doc_ids


def run_stages(stages, ids, doc_ids=None):
    kwargs = stage_kwargs(ids, ids, doc_ids, 1)[0]
    h = ids
    for stage in stages:
        h = stage(h, **kwargs)
    return h


def test_split_layers_is_balanced_and_front_loaded():
    assert split_layers(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_layers(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="cannot cut 2 decoder layers into 3"):
        split_layers(2, 3)


@pytest.mark.parametrize("mtp", [0, 1])
def test_stages_backward_matches_compute_loss_with_mtp_doc_masks_and_balance(mtp):
    ids, doc_ids = batch()
    ref_model = tiny_model(mtp=mtp).train()
    ref = compute_loss(ref_model, ids, doc_ids=doc_ids)
    ref.loss.backward()
    model = tiny_model(mtp=mtp).train()
    stages = split_deepseek_v3(model, 3)
    loss = run_stages(stages, ids, doc_ids)
    loss.backward()
    earlier_balance = sum(s.stats["balance_loss"] for s in stages[:-1])  # enters gradients, not the loss
    torch.testing.assert_close(float(loss.detach()) + earlier_balance, float(ref.loss.detach()), rtol=1e-6, atol=0)
    last = stages[-1].stats
    torch.testing.assert_close(torch.tensor(last["lm_loss"]), ref.lm_loss.detach())
    torch.testing.assert_close(torch.tensor(last["mtp_loss"]), ref.mtp_loss.detach())
    balance = sum(s.stats["balance_loss"] for s in stages)
    torch.testing.assert_close(torch.tensor(balance), ref.balance_loss.detach(), rtol=1e-6, atol=1e-9)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name  # an expert no token chose has none in both
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_embedding_is_first_and_head_last_and_the_last_stage_keeps_the_embedding_for_mtp():
    model = tiny_model(mtp=0)
    stages = split_deepseek_v3(model, 2)
    assert stages[0].embed_tokens is model.embed_tokens and stages[0].lm_head is None
    assert stages[1].lm_head is model.lm_head and stages[1].norm is model.norm and stages[1].embed_tokens is None
    staged = [id(p) for s in stages for p in s.parameters()]
    assert len(staged) == len(set(staged)) and set(staged) == {id(p) for p in model.parameters()}
    with_mtp = split_deepseek_v3(tiny_model(mtp=1), 2)
    assert with_mtp[1].embed_tokens is with_mtp[0].embed_tokens and len(with_mtp[1].mtp) == 1
    assert tied_parameter_names(tiny_config(mtp=1), 2) == ["embed_tokens.weight"]
    assert tied_parameter_names(tiny_config(mtp=0), 2) == []


def test_a_partial_build_holds_only_its_stage_with_the_whole_models_weights():
    config = tiny_config(layers=4, mtp=1)
    whole = tiny_model().state_dict()
    for stage in range(4):
        parts = stage_parts(config, 4, [stage])
        partial = tiny_model(parts=parts)
        state = partial.state_dict()
        assert state and all(torch.equal(state[k], whole[k]) for k in state)
        for name in state:
            if name not in tied_parameter_names(config, 4) and not name.startswith("rotary"):
                assert stage_of_parameter(name, config, 4) == stage, name
        (only,) = split_deepseek_v3(partial, 4, [stage])
        assert {id(p) for p in only.parameters()} == {id(p) for p in partial.parameters()}
    middle = tiny_model(parts=stage_parts(config, 4, [1]))
    with pytest.raises(RuntimeError, match="'lm_head' was not built"):
        middle.lm_head(torch.zeros(1, config.hidden_size))


def test_a_partial_build_draws_from_the_global_generator_as_a_whole_build_does():
    tiny_model()
    after_whole = torch.rand(3)
    tiny_model(parts={"norm"})
    assert torch.equal(torch.rand(3), after_whole)
