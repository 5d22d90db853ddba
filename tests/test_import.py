"""`dsctl import`: a random DeepseekV3 written by transformers, with a BPE tokenizer trained
here and its chat template, and an FP8 block-quantized copy as DeepSeek ships them, become
dsctl checkpoints whose logits equal transformers'; unsupported configs are refused."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsctl.errors import UserError
from dsctl.fp8.reference import weight_dequant, weight_quant
from dsctl.pipeline.testing import run_stage
from stages import import_hf

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<|bos|>", "<|end|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]


def write_bpe_tokenizer(directory, vocab_size: int = 400, chat_template: str | None = CHAT_TEMPLATE) -> None:
    """A byte-level BPE trained here in a second, saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [f"What is {a} + {b}? <think>{a} + {b} = {a + b}</think><answer>{a + b}</answer>"
             for a in range(40) for b in range(40)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<|bos|>", "eos_token": "<|end|>", "pad_token": "<|pad|>",
              "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if chat_template:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_hf_model(directory, vocab_size: int = 400, seed: int = 0, max_shard_size: str = "5GB", **overrides):
    """A random DeepseekV3ForCausalLM saved by transformers itself (its own layout)."""
    import transformers

    transformers.logging.set_verbosity_error()
    shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, moe_intermediate_size=32,
                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                 n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1,
                 kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                 max_position_embeddings=256, bos_token_id=0, eos_token_id=1, routed_scaling_factor=2.5)
    config = transformers.DeepseekV3Config(**{**shape, **overrides})
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():  # random router biases, so a wrong bias path would change the logits
        for layer in model.model.layers[config.first_k_dense_replace:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = write_hf_model(root / "model")
    write_bpe_tokenizer(root / "model")
    return root / "model", model


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_an_import_gives_the_logits_transformers_gives(hf_dir, tmp_path):
    from dsctl.train.artifacts import load_model

    src, reference = hf_dir
    artifact = run_stage(import_hf.STAGE, {"path": str(src)}, {}, tmp_path / "work")
    ours = load_model(artifact).eval()
    ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    diff = (_logits(ours, ids) - _logits(reference, ids)).abs().max().item()
    assert diff < 1e-4, diff
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (artifact.path / name).is_file()
    # cached by the directory's content: the same files are a cache hit, an edited one is not
    assert run_stage(import_hf.STAGE, {"path": str(src)}, {}, tmp_path / "work").key == artifact.key
    edited = tmp_path / "edited"
    shutil.copytree(src, edited)
    config_text = (src / "tokenizer_config.json").read_text()
    (edited / "tokenizer_config.json").write_text(config_text.replace("<|pad|>", "<|end|>"))
    assert run_stage(import_hf.STAGE, {"path": str(edited)}, {}, tmp_path / "work").key != artifact.key


def test_fp8_weights_are_dequantized_with_their_block_scales(hf_dir, tmp_path):
    from dsctl.train.artifacts import load_model

    src, reference = hf_dir
    fp8 = tmp_path / "fp8"
    shutil.copytree(src, fp8)
    tensors = _fused_experts(load_file(str(src / "model.safetensors")), layers=(1, 2), experts=8)
    quantized, stored = {}, {}
    for name, t in tensors.items():
        # DeepSeek quantizes the Linear weights of attention and the MLPs, not embeddings,
        # norms, the router or the head
        if t.dim() == 2 and name.endswith("_proj.weight") or t.dim() == 3:
            if t.dim() == 3:  # a fused expert tensor: quantize each expert's matrix
                pairs = [weight_quant(m) for m in t]
                quantized[name] = torch.stack([q for q, _ in pairs])
                quantized[name + "_scale_inv"] = torch.stack([s for _, s in pairs])
            else:
                quantized[name], quantized[name + "_scale_inv"] = weight_quant(t)
            stored[name] = quantized[name]
        else:
            quantized[name] = t
    save_file(quantized, str(fp8 / "model.safetensors"))
    config = json.loads((fp8 / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]}
    config["torch_dtype"] = "float32"
    (fp8 / "config.json").write_text(json.dumps(config))
    artifact = run_stage(import_hf.STAGE, {"path": str(fp8)}, {}, tmp_path / "work")
    assert artifact.metrics["dequantized_fp8"] == len(stored) > 10
    assert artifact.metrics["split_fused_experts"] == 4  # gate_up and down of layers 1 and 2
    written = {}
    for shard in artifact.path.glob("*.safetensors"):
        written.update(load_file(str(shard)))
    q_proj = "model.layers.0.self_attn.q_a_proj.weight"
    assert torch.equal(written[q_proj], weight_dequant(stored[q_proj], quantized[q_proj + "_scale_inv"]))
    fused = "model.layers.1.mlp.experts.gate_up_proj"
    expert3 = weight_dequant(stored[fused][3], quantized[fused + "_scale_inv"][3])
    assert torch.equal(torch.cat([written["model.layers.1.mlp.experts.3.gate_proj.weight"],
                                  written["model.layers.1.mlp.experts.3.up_proj.weight"]]), expert3)
    assert not any(k.endswith("_scale_inv") for k in written)
    assert "quantization_config" not in json.loads((artifact.path / "config.json").read_text())
    ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(1))
    ours, theirs = _logits(load_model(artifact).eval(), ids), _logits(reference, ids)
    # E4M3 keeps ~2 significant digits per weight: close to the unquantized model, not equal
    assert (ours - theirs).abs().max() < 0.1 * theirs.abs().max()


def _fused_experts(tensors, layers, experts):
    """The layout transformers keeps in memory (and some tools save): one (E, 2I, d)
    gate_up_proj and one (E, d, I) down_proj per MoE layer instead of per-expert weights."""
    out = dict(tensors)
    for layer in layers:
        prefix = f"model.layers.{layer}.mlp.experts"
        gate_up = [torch.cat([out.pop(f"{prefix}.{e}.gate_proj.weight"), out.pop(f"{prefix}.{e}.up_proj.weight")])
                   for e in range(experts)]
        out[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        out[f"{prefix}.down_proj"] = torch.stack([out.pop(f"{prefix}.{e}.down_proj.weight") for e in range(experts)])
    return out


@pytest.mark.parametrize("change,message", [
    ({"scoring_func": "softmax"}, "scoring_func = 'softmax'; dsctl's model implements only 'sigmoid'"),
    ({"topk_method": "greedy"}, "topk_method = 'greedy'"),
    ({"rope_scaling": {"type": "llama3", "factor": 8.0}}, "rope_scaling type must be 'yarn'"),
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"moe_layer_freq": 2}, "moe_layer_freq = 2 is not implemented"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config .* is not implemented"),
])
def test_config_fields_the_model_does_not_implement_are_refused_by_name(hf_dir, tmp_path, change, message):
    src, _ = hf_dir
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    config = {**json.loads((bad / "config.json").read_text()), **change}
    config.pop("rope_parameters", None) if "rope_scaling" in change else None
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        run_stage(import_hf.STAGE, {"path": str(bad)}, {}, tmp_path / "work")


def test_a_directory_without_weights_or_tokenizer_is_one_sentence(hf_dir, tmp_path):
    src, _ = hf_dir
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(src / "config.json", partial / "config.json")
    with pytest.raises(UserError, match="no tokenizer.json"):
        run_stage(import_hf.STAGE, {"path": str(partial)}, {}, tmp_path / "work")
    write_bpe_tokenizer(partial)
    with pytest.raises(UserError, match=r"no \*\.safetensors weights"):
        run_stage(import_hf.STAGE, {"path": str(partial)}, {}, tmp_path / "work")
    with pytest.raises(UserError, match="no config.json"):
        run_stage(import_hf.STAGE, {"path": str(tmp_path / "nowhere")}, {}, tmp_path / "work")


def test_dsctl_import_dir_streams_a_sharded_checkpoint_shard_by_shard(tmp_path, capsys):
    from dsctl.cli import main
    from dsctl.train.artifacts import load_model

    reference = write_hf_model(tmp_path / "sharded", seed=3, max_shard_size="200KB")
    write_bpe_tokenizer(tmp_path / "sharded")
    inputs = sorted((tmp_path / "sharded").glob("*.safetensors"))
    assert len(inputs) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    main(["--workdir", str(tmp_path / "work"), "import", str(tmp_path / "sharded")])
    path = capsys.readouterr().out.strip().splitlines()[-1]
    from dsctl.pipeline.store import Store

    artifact = Store(tmp_path / "work").resolve(path)
    assert len(list(artifact.path.glob("*.safetensors"))) == len(inputs)  # one output shard per input shard
    index = json.loads((artifact.path / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == artifact.metrics["tensors"]
    ids = torch.randint(0, 400, (1, 16), generator=torch.Generator().manual_seed(2))
    assert (_logits(load_model(artifact).eval(), ids) - _logits(reference, ids)).abs().max() < 1e-4


def test_an_import_post_trains_chats_and_exports_with_its_own_tokenizer(hf_dir, tmp_path, capsys):
    """import -> sft -> grpo -> rejection_sample -> distill -> eval -> chat -> export, and
    transformers reads each export back."""
    from rich.console import Console

    from dsctl.cli import main
    from dsctl.model.hf import load_hf
    from dsctl.serve.chat import ChatSession, ChatSettings, chat_loop
    from dsctl.tokenizer import HFTokenizer, load_tokenizer
    from dsctl.train.artifacts import check_hf_export
    from stages import distill, grpo, rejection_sample, sft
    from stages import eval as eval_stage
    from tests.sft_support import tiny_train_config

    src, reference = hf_dir
    work = tmp_path / "work"
    imported = run_stage(import_hf.STAGE, {"path": str(src)}, {}, work)
    tokenizer = load_tokenizer(imported.path)
    assert isinstance(tokenizer, HFTokenizer)
    # the model's own chat template frames the prompts
    assert tokenizer.decode(tokenizer.chat_prompt("What is 2 + 3?")) == "<|user|>What is 2 + 3?<|end|><|assistant|>"

    easy = {"arithmetic": {"min_digits": 1, "max_digits": 1, "ops": "+"}}
    tuned = run_stage(sft.STAGE, {**tiny_train_config(max_steps=3, seq_len=96), "families": ["arithmetic"],
                                  "difficulty": easy, "train_problems": 12, "eval_problems": 2, "max_new_tokens": 8},
                      {"checkpoint": [imported]}, work)
    rl = run_stage(grpo.STAGE, {"max_steps": 1, "group_size": 2, "prompts_per_step": 2, "max_new_tokens": 8,
                                "train_problems": 4, "eval_problems": 2, "difficulty": easy},
                   {"checkpoint": [tuned]}, work)
    assert rl.metrics["steps"] == 1 and (rl.path / "tokenizer.json").is_file()

    samples = run_stage(rejection_sample.STAGE, {"train_problems": 4, "samples_per_prompt": 2, "max_new_tokens": 8,
                                                 "difficulty": easy}, {"checkpoint": [rl]}, work)
    assert samples.metrics["sampled"] == 8
    student = run_stage(distill.STAGE, {**tiny_train_config(max_steps=2, seq_len=96), "student_layers": [0, 2],
                                        "student_overrides": {}, "train_problems": 6, "eval_problems": 2,
                                        "max_new_tokens": 8, "difficulty": easy},
                        {"samples": [samples], "teacher": [rl]}, work)
    assert student.metrics["student_accuracy"] >= 0 and (student.path / "tokenizer.json").is_file()
    report = run_stage(eval_stage.STAGE, {"eval_problems": 2, "samples": 2, "pass_ks": [1, 2], "max_new_tokens": 8,
                                          "difficulty": easy}, {"checkpoint": [imported, rl]}, work)
    assert len(json.loads((report.path / "report.json").read_text())["metrics"]) == 2

    session = ChatSession(load_hf(rl.path), load_tokenizer(rl.path), ChatSettings(temperature=0.0, max_new_tokens=5),
                          context=128)
    assert chat_loop(session, ["What is 2 + 3?"], Console(file=open("/dev/null", "w")), interactive=False) == 1
    assert session.history[-1]["role"] == "assistant"

    for artifact, original in ((imported, reference), (rl, None)):
        out = tmp_path / f"export-{artifact.key[:6]}"
        main(["--workdir", str(work), "export", artifact.key, "--out", str(out)])
        checked = check_hf_export(out)
        assert checked["max_logit_diff"] < 1e-4 and checked["tokenizer_match"], checked
        if original is not None:  # an unchanged import exports the model it was given
            import transformers

            theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            ids = torch.randint(0, 400, (2, 20), generator=torch.Generator().manual_seed(4))
            assert (_logits(theirs, ids) - _logits(original, ids)).abs().max() < 1e-5
    capsys.readouterr()


def test_serve_answers_the_openai_client_from_an_import(hf_dir, tmp_path):
    import openai

    from dsctl.tokenizer import load_tokenizer
    from tests.test_serve import MODEL, _start

    src, _ = hf_dir
    imported = run_stage(import_hf.STAGE, {"path": str(src)}, {}, tmp_path / "work")
    proc, base = _start(imported.path, tmp_path)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                               temperature=0, max_tokens=6)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # the prompt went through the model's own chat template
    assert reply.usage.prompt_tokens == len(load_tokenizer(imported.path).chat_prompt("What is 2 + 3?"))
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens >= 1
