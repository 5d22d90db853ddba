"""The model forward: padding masks, packed documents, position ids, loss with −100 labels."""

import torch
import torch.nn.functional as F

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss


def _model(**overrides) -> DeepSeekV3:
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny", **overrides)).eval()


def test_logits_shape_and_untied_head():
    model = _model()
    logits = model(torch.randint(0, 2048, (2, 7)))
    assert logits.shape == (2, 7, 2048)
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()


def test_left_padded_row_scores_like_the_unpadded_row():
    model = _model()
    ids = torch.randint(0, 2048, (1, 6))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone, batched = model(ids), model(padded, attention_mask=mask)
    torch.testing.assert_close(batched[:, 3:], alone, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(batched).all()  # pad queries see themselves: no NaN rows


def test_packed_documents_attend_only_within_their_document():
    model = _model()
    a, b = torch.randint(0, 2048, (1, 5)), torch.randint(0, 2048, (1, 4))
    packed = torch.cat((a, b), 1)
    doc_ids = torch.tensor([[0] * 5 + [1] * 4])
    with torch.no_grad():
        out = model(packed, doc_ids=doc_ids)
        torch.testing.assert_close(out[:, :5], model(a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 5:], model(b), rtol=1e-5, atol=1e-5)


def test_explicit_position_ids_shift_rope():
    model = _model()
    ids = torch.randint(0, 2048, (1, 5))
    with torch.no_grad():
        base = model(ids)
        shifted = model(ids, position_ids=torch.arange(10, 15)[None])
    # Relative positions are unchanged, so RoPE attention gives the same result.
    torch.testing.assert_close(base, shifted, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        spread = model(ids, position_ids=torch.tensor([[0, 2, 4, 6, 8]]))
    assert not torch.allclose(base[:, 1:], spread[:, 1:], atol=1e-4)


def test_lm_loss_is_plain_next_token_cross_entropy_and_ignores_minus_100():
    model = _model()
    ids = torch.randint(0, 2048, (2, 8))
    labels = ids.clone()
    labels[:, :4] = -100  # an SFT prompt
    out = compute_loss(model, ids, labels, mtp_weight=0.0)
    logits = model(ids)
    expected = F.cross_entropy(logits[:, 3:-1].reshape(-1, 2048), ids[:, 4:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, expected)
    assert out.n_tokens == 2 * 4
    assert out.mtp_loss == 0


def test_packed_loss_does_not_score_across_document_boundaries():
    model = _model()
    ids = torch.randint(0, 2048, (1, 9))
    doc_ids = torch.tensor([[0] * 5 + [1] * 4])
    out = compute_loss(model, ids, doc_ids=doc_ids, mtp_weight=1.0)
    assert out.n_tokens == 8 - 1  # the pair (last of doc 0 -> first of doc 1) is skipped


def test_training_loss_adds_mtp_and_balance_terms_and_trains_every_part():
    model = _model(seq_aux_loss_alpha=0.01, mtp_loss_weight=0.3).train()
    ids = torch.randint(0, 2048, (2, 12))
    out = compute_loss(model, ids)
    torch.testing.assert_close(out.loss, out.lm_loss + 0.3 * out.mtp_loss + out.balance_loss)
    assert out.balance_loss > 0 and out.mtp_loss > 0
    out.loss.backward()
    for name in ("embed_tokens.weight", "lm_head.weight", "mtp.0.eh_proj.weight", "layers.1.mlp.gate.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_bad_mask_shapes_are_named_in_the_error():
    import pytest

    model = _model()
    ids = torch.randint(0, 2048, (2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="doc_ids"):
        model(ids, doc_ids=torch.zeros(2, 3, dtype=torch.long))


def test_a_decode_step_gets_the_context_the_general_path_builds():
    from dsctl.model.model import attention_context

    model = DeepSeekV3(ModelConfig.preset("tiny"))
    # Left padding, a pad query (row 1's last slot), and a full row.
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    step = attention_context(model.rotary, torch.float32, (3, 1), torch.device("cpu"), mask, None, None, 5)
    # The same last query, as the second token of a two-token chunk (the general path).
    chunk = attention_context(model.rotary, torch.float32, (3, 2), torch.device("cpu"), mask, None, None, 4)
    assert torch.equal(step.mask[:, :, 0], chunk.mask[:, :, 1])
    assert torch.equal(step.position_ids[:, 0], chunk.position_ids[:, 1])
    assert torch.equal(step.token_mask[:, 0], chunk.token_mask[:, 1])
    for a, b in zip(step.rope, chunk.rope):
        assert torch.equal(a[:, 0], b[:, 1])
    # Without padding there is nothing to hide: no mask at all (attention sees every slot).
    full = attention_context(model.rotary, torch.float32, (3, 1), torch.device("cpu"), torch.ones(3, 6), None, None, 5)
    assert full.mask is None and full.position_ids[:, 0].tolist() == [5, 5, 5]
