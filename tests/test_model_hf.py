"""Hugging Face interop: transformers' DeepseekV3ForCausalLM loads our export with the same logits."""

import json

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig
from dsctl.model.hf import load_hf, save_hf

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32,
        "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
CONFIGS = {
    "no_q_lora_dense_first": dict(first_k_dense_replace=1),
    "q_lora_group_limited": dict(q_lora_rank=16, n_group=4, topk_group=2, routed_scaling_factor=2.5),
    "yarn_all_moe": dict(first_k_dense_replace=0, rope_scaling=YARN, max_position_embeddings=64),
    "yarn_cos_sin_mscale_no_interleave": dict(
        rope_scaling=dict(YARN, mscale=0.707, mscale_all_dim=0), rope_interleave=False, num_hidden_layers=3),
}


def _random_model(overrides) -> DeepSeekV3:
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", **overrides)).eval()
    for moe in model.moe_layers():  # non-zero biases, so selection-only use is checked too
        moe.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transformers_logits_match_ours(tmp_path, name):
    model = _random_model(CONFIGS[name])
    save_hf(model, tmp_path)
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max() <= 1e-4
    bias = hf.model.layers[-1].mlp.gate.e_score_correction_bias
    torch.testing.assert_close(bias, model.layers[-1].mlp.gate.e_score_correction_bias)


def test_config_json_is_deepseek_v3(tmp_path):
    save_hf(_random_model({}), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert not (tmp_path / "pytorch_model.bin").exists()


def test_load_hf_restores_every_weight_including_mtp_and_router_bias(tmp_path):
    model = _random_model({"num_nextn_predict_layers": 2, "q_lora_rank": 16})
    save_hf(model, tmp_path)
    back = load_hf(tmp_path)
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], rtol=0, atol=0, msg=k)


def test_load_hf_reads_a_checkpoint_saved_by_transformers(tmp_path):
    model = _random_model({"num_nextn_predict_layers": 0})
    save_hf(model, tmp_path / "ours")
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    hf.save_pretrained(tmp_path / "theirs")  # fused expert tensors, rope_parameters
    back = load_hf(tmp_path / "theirs")
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=1e-6)


def test_load_hf_names_the_problem_with_a_bad_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="deepseek_v3"):
        load_hf(tmp_path)
