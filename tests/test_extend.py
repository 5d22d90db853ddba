"""extend: YaRN config, scaled model copies, long-context batches."""

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig
from dsctl.model.hf import load_hf, save_hf
from dsctl.model.loss import IGNORE_INDEX
from dsctl.model.yarn import with_yarn, yarn_rope_scaling
from dsctl.tasks.passkey import FILLER, NEEDLE, QUESTION
from dsctl.train.artifacts import trained_context
from dsctl.train.long_context import LongContextBatches


class ByteTokenizer:
    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def tiny_model():
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny", vocab_size=256, num_nextn_predict_layers=0))


def test_yarn_rope_scaling_has_deepseek_v3_fields():
    rs = yarn_rope_scaling(4, 256)
    assert rs == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32.0,
                  "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    with pytest.raises(ValueError):
        yarn_rope_scaling(0.5, 256)


def test_with_yarn_keeps_weights_changes_rope_and_survives_hf_round_trip(tmp_path):
    base = tiny_model()
    scaled = with_yarn(base, 4, 64)
    assert scaled.config.rope_scaling["factor"] == 4.0 and scaled.config.max_position_embeddings == 256
    for (name, a), (_, b) in zip(base.state_dict().items(), scaled.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 256, (1, 40))
    assert not torch.allclose(base(ids), scaled(ids))  # slower rotations + sharper softmax
    save_hf(scaled, tmp_path)
    loaded = load_hf(tmp_path)
    assert loaded.config.rope_scaling == scaled.config.rope_scaling
    assert torch.allclose(loaded(ids), scaled(ids), atol=1e-5)


@pytest.mark.parametrize("original", [64, 256, 1024])
def test_default_yarn_keeps_short_wavelengths_and_interpolates_those_beyond_the_context(original):
    import math

    from dsctl.model.rope import rope_frequencies
    from stages.extend import ExtendConfig

    cfg = ExtendConfig()
    config = ModelConfig.preset("tiny", vocab_size=256, num_nextn_predict_layers=0, qk_rope_head_dim=16,
                                rope_theta=10000.0)
    base = DeepSeekV3(config)
    scaled = with_yarn(base, cfg.factor, original, beta_fast=cfg.beta_fast, beta_slow=cfg.beta_slow,
                       mscale=cfg.mscale)
    before, _ = rope_frequencies(base.config)
    after, _ = rope_frequencies(scaled.config)
    wavelengths = 2 * math.pi / before.double()
    short, long = wavelengths < original / 4, wavelengths > original
    assert short.any() and long.any()
    assert torch.equal(after[short], before[short])
    assert torch.allclose(after[long], before[long] / cfg.factor)
    assert torch.equal(scaled.rotary.inv_freq, after)  # the table the scaled model rotates with


def test_extending_twice_multiplies_factors_over_the_first_original_context():
    twice = with_yarn(with_yarn(tiny_model(), 2, 64), 2, 128)
    assert twice.config.rope_scaling["factor"] == 4.0
    assert twice.config.rope_scaling["original_max_position_embeddings"] == 64
    assert trained_context({}, twice.config) == 256


def test_trained_context_prefers_the_training_seq_len():
    cfg = tiny_model().config
    assert trained_context({"config": {"seq_len": 128}}, cfg) == 128
    assert trained_context({}, cfg) == cfg.max_position_embeddings


class Windows:
    """Corpus windows: row r of batch n holds the number n*B + r everywhere."""

    def __init__(self, seq_len, batch_size):
        self.seq_len, self.batch_size = seq_len, batch_size

    def batch(self, step, micro=0):
        start = step * self.batch_size
        rows = torch.arange(start, start + self.batch_size)[:, None].expand(-1, self.seq_len).clone()
        return {"input_ids": rows, "labels": rows, "doc_ids": torch.zeros_like(rows)}


def test_long_context_batches_mix_kinds_deterministically_and_score_only_passkey_answers():
    tok = ByteTokenizer()
    batches = LongContextBatches(Windows(1600, 2), tok, 1600, 2, seed=1, passkey_fraction=0.5)
    kinds = [batches.is_passkey_step(s) for s in range(40)]
    assert 10 < sum(kinds) < 30
    steps = [s for s, k in enumerate(kinds) if k][:3]
    for step in steps:
        batch = batches.batch(step)
        assert torch.equal(batch["input_ids"], batches.batch(step)["input_ids"])  # pure function of the step
        rows, length = batch["input_ids"].shape
        assert 200 <= length <= 1600 and rows * length >= 2 * 1600 - length  # same token budget
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            scored = tok.decode(labels[labels != IGNORE_INDEX].tolist())
            key = tok.decode(ids[-5:].tolist())  # the answer ends the document
            assert key.isdigit()
            assert scored == NEEDLE.format(key=key) + QUESTION + " " + key  # all but the filler
            assert FILLER in tok.decode(ids.tolist())
    corpus = batches.batch(kinds.index(False))
    assert "doc_ids" not in corpus  # one long context: positions run across documents
    assert torch.equal(corpus["labels"], corpus["input_ids"]) and corpus["input_ids"].shape == (2, 1600)
