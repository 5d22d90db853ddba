"""An imported model's Hugging Face tokenizer behind dsctl's tokenizer interface: encoding,
the model's chat template and the assistant mask, the loader's choice, checkpoint files,
and sampling that stops at a spelled-out `</answer>`.

The tokenizers are real: a small byte-level BPE trained here with the `tokenizers`
library (a fraction of a second), saved as tokenizer.json beside a tokenizer_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsctl.errors import UserError
from dsctl.tokenizer import CHAT_TEMPLATE, HFTokenizer, Tokenizer, load_tokenizer
from tests.sft_support import make_tokenizer

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<pad>"
USER, ASSISTANT, IM_START, IM_END = "<｜User｜>", "<｜Assistant｜>", "<|im_start|>", "<|im_end|>"
SPECIALS = [BOS, EOS, PAD, USER, ASSISTANT, IM_START, IM_END]
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% else %}" + ASSISTANT + "{{ m['content'] }}" + EOS + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + IM_END + "\n{% endfor %}"
    "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)
CORPUS = [
    "What is 12 + 7? <think>12 + 7 = 19</think><answer>19</answer>",
    "The quick brown fox jumps over the lazy dog. Café, naïve, jalapeño.",
    "Solve for x: 3x = 12. <think>x = 12 / 3 = 4</think><answer>4</answer>",
] * 30
CONVERSATION = [
    {"role": "system", "content": "Answer in the tags."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>2 + 2 = 4</think><answer>4</answer>"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "<think>3 + 3 = 6</think><answer>6</answer>"},
]


def make_hf_tokenizer(out: Path, **config) -> Path:
    """tokenizer.json (byte-level BPE whose post-processor adds bos, as DeepSeek's does)
    and tokenizer_config.json holding `config`."""
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    out.mkdir(parents=True, exist_ok=True)
    backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizerFast", **config}))
    return out


@pytest.fixture(scope="module")
def deepseek_dir(tmp_path_factory) -> Path:
    return make_hf_tokenizer(tmp_path_factory.mktemp("deepseek"), bos_token=BOS, eos_token=EOS, pad_token=PAD,
                             chat_template=DEEPSEEK_TEMPLATE)


@pytest.fixture(scope="module")
def deepseek(deepseek_dir) -> HFTokenizer:
    return HFTokenizer(deepseek_dir)


def masked_text(tok, messages) -> str:
    ids, mask = tok.encode_chat(messages)
    assert len(ids) == len(mask)
    return tok.decode([i for i, m in zip(ids, mask) if m])


def reference_ids(directory: Path, messages, add_generation_prompt: bool, **kw) -> list[int]:
    """transformers' own tokenization of the chat (AutoTokenizer, offline)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return list(hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                       return_dict=False, **kw))


def test_encode_adds_no_special_tokens_and_round_trips(deepseek):
    for text in ["", " ", "What is 12 + 7?", "  runs   of spaces\n\n\ttabs", "naïve café 🙂 日本語",
                 f"{BOS}specials{EOS} inside text", "<think>a</think><answer>b</answer>"]:
        ids = deepseek.encode(text)
        assert deepseek.decode(ids) == text, repr(text)
        assert deepseek.bos_id not in deepseek.encode("plain text")
    assert deepseek.encode(EOS) == [deepseek.eos_id]
    assert (deepseek.bos_id, deepseek.eos_id, deepseek.pad_id) == (0, 1, 2)
    assert deepseek.special_tokens == {t: i for i, t in enumerate(SPECIALS)}
    assert deepseek.vocab_size == len(json.loads((deepseek.directory / "tokenizer.json").read_text())["model"]["vocab"])


def test_chat_prompt_is_the_models_template_with_the_generation_prompt(deepseek, deepseek_dir):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    ids = deepseek.chat_prompt("What is 2 + 2?", system="Be brief.")
    assert ids == reference_ids(deepseek_dir, messages, add_generation_prompt=True)
    assert deepseek.decode(ids) == f"{BOS}Be brief.{USER}What is 2 + 2?{ASSISTANT}"
    assert ids.count(deepseek.bos_id) == 1  # the template writes bos; encoding adds none


def test_assistant_mask_covers_each_reply_and_its_end_of_turn(deepseek, deepseek_dir):
    ids, mask = deepseek.encode_chat(CONVERSATION)
    assert ids == reference_ids(deepseek_dir, CONVERSATION, add_generation_prompt=False)
    assert masked_text(deepseek, CONVERSATION) == f"{CONVERSATION[2]['content']}{EOS}{CONVERSATION[4]['content']}{EOS}"
    # a reply starts right after its generation prompt: the mask opens on the token after <｜Assistant｜>
    first = mask.index(1)
    assert ids[first - 1] == deepseek.special_tokens[ASSISTANT]


def test_chatml_mask_keeps_the_newline_after_the_end_of_turn_out(tmp_path):
    directory = make_hf_tokenizer(tmp_path, eos_token=IM_END, chat_template=CHATML_TEMPLATE)
    tok = HFTokenizer(directory)
    assert tok.bos_id is None and tok.pad_id == tok.eos_id  # no pad: eos stands in
    assert masked_text(tok, CONVERSATION) == f"{CONVERSATION[2]['content']}{IM_END}{CONVERSATION[4]['content']}{IM_END}"
    ids, _ = tok.encode_chat(CONVERSATION[:2], add_generation_prompt=True)
    assert ids == reference_ids(directory, CONVERSATION[:2], add_generation_prompt=True)
    assert tok.decode(ids).endswith(f"{IM_START}assistant\n")


def test_a_tokenizer_without_a_template_uses_dsctls_layout(tmp_path):
    directory = make_hf_tokenizer(tmp_path, bos_token=BOS, eos_token=EOS)
    tok = HFTokenizer(directory)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = tok.chat_prompt("What is 2 + 2?")
    assert tok.decode(ids) == f"{BOS}<|user|>What is 2 + 2?{EOS}<|assistant|>"
    assert ids == reference_ids(directory, messages, add_generation_prompt=True, chat_template=CHAT_TEMPLATE)
    assert masked_text(tok, CONVERSATION) == f"{CONVERSATION[2]['content']}{EOS}{CONVERSATION[4]['content']}{EOS}"


def test_a_chat_template_jinja_file_is_the_template(tmp_path):
    directory = make_hf_tokenizer(tmp_path, bos_token=BOS, eos_token=EOS)
    (directory / "chat_template.jinja").write_text(DEEPSEEK_TEMPLATE)
    assert HFTokenizer(directory).decode(HFTokenizer(directory).chat_prompt("hi")) == f"{BOS}{USER}hi{ASSISTANT}"


@pytest.mark.parametrize("template,problem", [
    # DeepSeek-R1's way: past replies lose their reasoning
    (DEEPSEEK_TEMPLATE.replace("{{ m['content'] }}" + EOS, "{{ m['content'].split('</think>')[-1] }}" + EOS),
     "rewrites message 2"),
    # a generation prompt that a written reply does not start with
    (DEEPSEEK_TEMPLATE.replace("{% if add_generation_prompt %}" + ASSISTANT, "{% if add_generation_prompt %}"
                               + ASSISTANT + "<think>\n"), "prefix-consistently"),
])
def test_a_template_that_hides_the_reply_is_refused(tmp_path, template, problem):
    tok = HFTokenizer(make_hf_tokenizer(tmp_path, bos_token=BOS, eos_token=EOS, chat_template=template))
    with pytest.raises(UserError, match=problem):
        tok.encode_chat(CONVERSATION)


def test_load_tokenizer_picks_the_kind_by_its_files(tmp_path, deepseek_dir):
    make_tokenizer(tmp_path / "dsctl")  # also writes a tokenizer.json: tokenizer.model wins
    assert type(load_tokenizer(tmp_path / "dsctl")) is Tokenizer
    assert type(load_tokenizer(deepseek_dir)) is HFTokenizer
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="tokenizer.model.*tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_a_checkpoint_keeps_and_exports_an_imported_tokenizer(tmp_path, deepseek_dir):
    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.pipeline.store import Artifact
    from dsctl.train.artifacts import check_hf_export, export_checkpoint, tokenizer_dir

    source = make_hf_tokenizer(tmp_path / "src", bos_token=BOS, eos_token=EOS)
    (source / "chat_template.jinja").write_text(DEEPSEEK_TEMPLATE)
    tok = HFTokenizer(source)
    torch.manual_seed(0)
    export_checkpoint(DeepSeekV3(ModelConfig.preset("tiny", vocab_size=tok.vocab_size)), tmp_path / "ckpt", source,
                      None)
    directory = tokenizer_dir(Artifact(tmp_path / "ckpt", "key", "checkpoint", {}))
    assert directory == tmp_path / "ckpt" and (directory / "chat_template.jinja").is_file()
    assert load_tokenizer(directory).chat_prompt("hi") == tok.chat_prompt("hi")
    result = check_hf_export(directory)
    assert result["tokenizer_match"] is True and result["max_logit_diff"] < 1e-4


def steered_model(vocab_size: int, prompt_last: int, reply: list[int]):
    """A tiny DeepSeekV3 that greedily writes `reply` after `prompt_last`, then goes on.

    With every block's output projection zeroed the residual stream is the token's
    embedding, so the logits are a bigram table: token a's embedding is a basis vector
    e_k and the head row of the token that follows it reads e_k."""
    from dsctl.model import DeepSeekV3, ModelConfig

    follows: dict[int, int] = {}
    for a, b in zip([prompt_last, *reply], reply):
        assert follows.setdefault(a, b) == b, "the reply needs one successor per token"
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=vocab_size))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("layers.") and name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (a, b) in enumerate(follows.items()):
            model.embed_tokens.weight[a, k] = 1.0
            model.lm_head.weight[b, k] = 10.0
    return model


def test_sampling_stops_at_a_spelled_out_answer_close(deepseek):
    from dsctl.model import generate
    from dsctl.rl.rollout import sample_groups
    from dsctl.sampling import completion_text, sample, stop_rule
    from dsctl.tasks import split_problems

    assert len(deepseek.encode("</answer>")) > 1  # several tokens: only a stop string can end on it
    assert stop_rule(deepseek)["stop_strings"] == ["</answer>"]
    reply = deepseek.encode("<answer>4</answer>")
    model = steered_model(deepseek.vocab_size, deepseek.special_tokens[ASSISTANT], reply)
    prompt = deepseek.chat_prompt("What is 2 + 2?")
    # the steered model never writes eos: without the stop string it runs to the budget
    assert generate(model, [prompt], max_new_tokens=12, temperature=0,
                    stop_token_ids=[deepseek.eos_id]).finish_reasons == ["length"]

    [[completion]] = sample(model, deepseek, ["What is 2 + 2?"], max_new_tokens=12)
    assert (completion.text, completion.n_tokens, completion.finished) == ("<answer>4</answer>", len(reply), True)
    problems = split_problems("arithmetic", "worked", 2, seed=0, difficulty={"max_digits": 2})
    rollout = sample_groups(model, deepseek, problems, group_size=2, max_new_tokens=12, temperature=0.0, top_p=1.0,
                            seed=0)
    assert rollout.texts == ["<answer>4</answer>"] * 4 and rollout.truncated.sum() == 0
    assert rollout.completion_ids == [reply] * 4
    # a token that completes the close and carries more is cut at the close
    assert completion_text(deepseek, deepseek.encode("<answer>4</answer>\nmore") + [deepseek.eos_id]) == \
        "<answer>4</answer>"


def test_sft_then_grpo_run_on_a_checkpoint_with_an_imported_tokenizer(tmp_path, deepseek_dir):
    import stages.grpo as grpo
    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.pipeline.testing import run_stage
    from dsctl.train.artifacts import export_checkpoint
    from stages import sft
    from tests.sft_support import EASY, tiny_train_config

    torch.manual_seed(0)
    base = tmp_path / "base"
    export_checkpoint(DeepSeekV3(ModelConfig.preset("tiny", vocab_size=HFTokenizer(deepseek_dir).vocab_size)),
                      base, deepseek_dir, None)
    tuned = run_stage(sft.STAGE, {**tiny_train_config(max_steps=2), "families": ["arithmetic"], "difficulty": EASY,
                                  "train_problems": 8, "eval_problems": 2, "max_new_tokens": 4},
                      {"checkpoint": [base]}, tmp_path / "sft")
    assert not (tuned.path / "tokenizer.model").exists()
    assert (tuned.path / "tokenizer.json").read_bytes() == (deepseek_dir / "tokenizer.json").read_bytes()
    config = {"max_steps": 1, "group_size": 2, "prompts_per_step": 2, "max_new_tokens": 4, "train_problems": 4,
              "eval_problems": 2, "families": ["arithmetic"], "difficulty": EASY}
    trained = run_stage(grpo.STAGE, config, {"checkpoint": [tuned.path]}, tmp_path / "grpo")
    assert trained.metrics["steps"] == 1
    assert type(load_tokenizer(trained.path)) is HFTokenizer
