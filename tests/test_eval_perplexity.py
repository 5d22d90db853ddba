"""validation_perplexity: token-weighted loss over validation windows, optionally from a position on."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsctl.eval.perplexity import validation_perplexity
from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.train.batches import PackedTokens, load_token_split

SEQ, BATCH, BATCHES, EOS = 32, 2, 2, 0


@pytest.fixture(scope="module")
def model_and_shards(tmp_path_factory):
    from dsctl.data.shards import TokenShardWriter, write_index

    root = tmp_path_factory.mktemp("ppl")
    rng = np.random.default_rng(0)
    writer = TokenShardWriter(root, "validation")
    for i in range(12):
        writer.write(f"doc-{i}", rng.integers(1, 64, size=int(rng.integers(5, 40))).tolist())
    write_index(root, 64, {"validation": writer.close()})
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny", vocab_size=64, num_nextn_predict_layers=0)).eval(), root


def _batches(shards):
    windows = PackedTokens(load_token_split(shards, "validation"), SEQ, BATCH, EOS, seed=0, shuffle=False)
    return [windows.batch(i) for i in range(BATCHES)]


@pytest.mark.parametrize("doc_masking", [True, False])
def test_from_position_zero_is_the_whole_window_loss(model_and_shards, doc_masking):
    model, shards = model_and_shards
    total = count = 0
    with torch.no_grad():  # the loss as computed before from_position existed
        for batch in _batches(shards):
            out = compute_loss(model, batch["input_ids"], batch["labels"],
                               doc_ids=batch["doc_ids"] if doc_masking else None, mtp_weight=0.0)
            total, count = total + float(out.lm_loss) * out.n_tokens, count + out.n_tokens
    default = validation_perplexity(model, shards, EOS, SEQ, BATCH, BATCHES, doc_masking=doc_masking)
    assert default == validation_perplexity(model, shards, EOS, SEQ, BATCH, BATCHES, doc_masking=doc_masking,
                                            from_position=0)
    assert default["val_loss"] == pytest.approx(total / count, abs=1e-4)


@pytest.mark.parametrize("k", [1, 10, 31])
def test_from_position_scores_only_tokens_at_or_past_it(model_and_shards, k):
    model, shards = model_and_shards
    losses = []
    with torch.no_grad():  # by hand: token t (t >= k) predicted from the logits at t-1, one context per window
        for batch in _batches(shards):
            ids = batch["input_ids"]
            logits = model(ids)
            losses.append(F.cross_entropy(logits[:, k - 1:-1].reshape(-1, logits.shape[-1]).float(),
                                          ids[:, k:].reshape(-1), reduction="none"))
    expected = float(torch.cat(losses).mean())
    got = validation_perplexity(model, shards, EOS, SEQ, BATCH, BATCHES, doc_masking=False, from_position=k)
    assert got["val_loss"] == pytest.approx(expected, abs=1e-4)
    if k == 1:  # the first token is never a target, so from 1 on is the whole window
        assert got == validation_perplexity(model, shards, EOS, SEQ, BATCH, BATCHES, doc_masking=False)


def test_from_position_must_leave_something_to_score(model_and_shards):
    model, shards = model_and_shards
    for bad in (-1, SEQ):
        with pytest.raises(ValueError, match="from_position"):
            validation_perplexity(model, shards, EOS, SEQ, BATCH, BATCHES, from_position=bad)
