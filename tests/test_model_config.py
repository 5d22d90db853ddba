"""ModelConfig: HF key names, validation messages, presets, parameter counts."""

import dataclasses

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig


def test_every_field_has_a_docstring():
    import ast
    import inspect

    from dsctl.model import config as config_module

    tree = ast.parse(inspect.getsource(config_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelConfig")
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            nxt = body[i + 1]
            assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), node.target.id


def test_hf_dict_round_trip_keeps_every_field_and_unknown_keys():
    c = ModelConfig.preset("small", q_lora_rank=32, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "mscale": 1.0, "mscale_all_dim": 1.0})
    d = c.to_hf_dict()
    assert d["model_type"] == "deepseek_v3" and d["architectures"] == ["DeepseekV3ForCausalLM"]
    assert d["num_key_value_heads"] == c.num_attention_heads
    d["some_future_key"] = 7
    back = ModelConfig.from_hf_dict(d)
    assert dataclasses.replace(back, extra={}) == dataclasses.replace(c, extra={})
    assert back.to_hf_dict()["some_future_key"] == 7


def test_from_hf_dict_reads_transformers5_rope_parameters():
    d = ModelConfig().to_hf_dict()
    del d["rope_scaling"], d["rope_theta"]
    d["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 2.0,
                            "original_max_position_embeddings": 128}
    c = ModelConfig.from_hf_dict(d)
    assert c.rope_theta == 5000.0 and c.rope_scaling["factor"] == 2.0


@pytest.mark.parametrize("overrides, field", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"n_group": 3}, "n_group"),
    ({"topk_group": 5, "n_group": 2}, "topk_group"),
    ({"num_experts_per_tok": 8, "topk_group": 1}, "num_experts_per_tok"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim"),
    ({"q_lora_rank": -1}, "q_lora_rank"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "original_max_position_embeddings"),
    ({"seq_aux_loss_alpha": -1.0}, "seq_aux_loss_alpha"),
])
def test_validation_names_the_bad_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        ModelConfig.preset("huge")


@pytest.mark.parametrize("name, low, high", [("tiny", 1e5, 1e6), ("small", 2e6, 9e6), ("100m", 80e6, 120e6)])
def test_preset_sizes(name, low, high):
    total, active = ModelConfig.preset(name).num_parameters()
    assert low <= total <= high and active < total


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": 16, "num_nextn_predict_layers": 2},
                                       {"first_k_dense_replace": 0, "n_shared_experts": 2}])
def test_analytic_parameter_count_matches_the_module(overrides):
    c = ModelConfig.preset("tiny", **overrides)
    assert DeepSeekV3(c).num_parameters() == c.num_parameters()


def test_preset_overrides_apply():
    assert ModelConfig.preset("tiny", vocab_size=300).vocab_size == 300
    assert isinstance(torch.tensor(ModelConfig.preset("tiny").qk_head_dim), torch.Tensor)


def test_from_hf_dict_refuses_an_architecture_it_cannot_run():
    d = ModelConfig().to_hf_dict()
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig.from_hf_dict(dict(d, hidden_act="gelu"))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig.from_hf_dict(dict(d, num_key_value_heads=1))
