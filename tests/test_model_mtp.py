"""Multi-token prediction: depth-k targets are t+k+1, and depth 0 is the plain LM loss."""

import torch
import torch.nn.functional as F

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss


def _model(depth: int) -> DeepSeekV3:
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny", num_nextn_predict_layers=depth)).eval()


def test_depth0_main_head_loss_equals_plain_lm_loss():
    model = _model(2)
    ids = torch.randint(0, 2048, (2, 10))
    with torch.no_grad():
        logits = model(ids)
        out = compute_loss(model, ids, mtp_weight=0.5)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 2048), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, plain)


def test_mtp_depth1_reads_token_t_plus_1_and_predicts_t_plus_2():
    model = _model(1)
    ids = torch.randint(0, 2048, (2, 10))
    with torch.no_grad():
        out = model.outputs(ids, mtp=True)
        # Independent recomputation over the first T-1 positions, no filler token involved.
        mtp = model.mtp[0]
        x = mtp.eh_proj(torch.cat((mtp.enorm(model.embed_tokens(ids[:, 1:])), mtp.hnorm(out.hidden_states[:, :-1])),
                                  -1))
        ctx = model.attention_context(ids[:, :-1], None, None, None, 0)
        h, _ = super(type(mtp), mtp).forward(x, ctx.rope, ctx.mask)
        ref = model.lm_head(mtp.shared_head.norm(h))
        torch.testing.assert_close(out.mtp_logits[0][:, :-1], ref, rtol=1e-5, atol=1e-5)
        loss = compute_loss(model, ids, mtp_weight=1.0)
    expected = F.cross_entropy(ref[:, :-1].reshape(-1, 2048), ids[:, 2:].reshape(-1))
    torch.testing.assert_close(loss.mtp_loss, expected)


def test_mtp_loss_averages_depths_with_targets_t_plus_k_plus_1():
    model = _model(2)
    ids = torch.randint(0, 2048, (1, 9))
    with torch.no_grad():
        out = model.outputs(ids, mtp=True)
        loss = compute_loss(model, ids, mtp_weight=1.0)
    per_depth = [F.cross_entropy(lg[0, : 9 - k - 1], ids[0, k + 1:]) for k, lg in enumerate(out.mtp_logits, 1)]
    torch.testing.assert_close(loss.mtp_loss, torch.stack(per_depth).mean())


def test_mtp_shares_embedding_and_head_with_the_main_model():
    model = _model(1)
    names = {n for n, _ in model.mtp.named_parameters()}
    assert not any("embed_tokens" in n or "head.weight" in n for n in names)
