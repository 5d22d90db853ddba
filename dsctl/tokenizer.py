"""The tokenizer: sentencepiece BPE with byte fallback, reserved chat/reasoning tokens, HF export.

    tok = Tokenizer.train(texts, vocab_size=4096, out_dir=Path("tok"), seed=0)
    tok = Tokenizer.load(Path("tok"))
    ids = tok.encode("What is 2 + 2?")             # no bos/eos added
    ids, mask = tok.encode_chat([{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "<think>…</think><answer>4</answer>"}])

Lossless by construction: no normalization (`identity`), no dummy prefix, no whitespace
stripping, and bytes the vocabulary lacks fall back to <0xNN> byte pieces, so
`decode(encode(s)) == s` for any text (one exception, inherent to sentencepiece: the
character U+2581 "▁" itself, which sentencepiece uses for the space, decodes as a space).
Digits are always split one per token (`split_digits`), which helps arithmetic.

Reserved tokens (`SPECIAL_TOKENS`) are sentencepiece user-defined symbols: each is one
id and is matched atomically wherever it appears in text. Chat layout:

    <|bos|> <|system|> sys <|eos|> <|user|> question <|eos|> <|assistant|> answer <|eos|>

`encode_chat`'s assistant mask is 1 on assistant content and its closing <|eos|> (what
the model must learn to produce), 0 on everything else.

A tokenizer directory holds tokenizer.model (sentencepiece), special_tokens.json, and
HF files (tokenizer.json, tokenizer_config.json with the same chat template) that
`transformers.AutoTokenizer.from_pretrained(dir)` loads offline and that encode to the
same ids: a `tokenizers` BPE with sentencepiece's vocabulary, merges ranked as
sentencepiece ranks them (by the merged piece's score), and the same pre-split into
words (a word starts at a run of spaces) and single digits as sentencepiece.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from dsctl.errors import UserError

SPECIAL_TOKENS = (
    "<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>",
    "<think>", "</think>", "<answer>", "</answer>",
)
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# sentencepiece drops training sentences longer than this (bytes); longer lines are cut.
_MAX_SENTENCE_BYTES = 16384


class Tokenizer:
    """A loaded tokenizer directory (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        model = self.directory / "tokenizer.model"
        if not model.exists():
            raise UserError(f"{self.directory} is not a tokenizer directory: tokenizer.model is missing")
        self.sp = spm.SentencePieceProcessor(model_file=str(model))
        self.special_tokens: dict[str, int] = {t: self.sp.piece_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in self.special_tokens.items() if self.sp.id_to_piece(i) != t]
        if missing:
            raise UserError(f"{model}: the model lacks reserved token(s) {missing}; retrain it with dsctl tokenize")
        self.bos_id = self.special_tokens["<|bos|>"]
        self.eos_id = self.special_tokens["<|eos|>"]
        self.pad_id = self.special_tokens["<|pad|>"]

    @classmethod
    def load(cls, directory: Path | str) -> "Tokenizer":
        return cls(Path(directory))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    # -- text ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))

    # -- chat ------------------------------------------------------------------------------
    def encode_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask) of a conversation in the chat layout above."""
        ids, mask = [self.bos_id], [0]
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in ROLES:
                raise ValueError(f"message {i}: role must be one of {ROLES}, got {role!r}")
            content = self.encode(message.get("content", ""))
            learn = int(role == "assistant")
            ids += [self.special_tokens[f"<|{role}|>"], *content, self.eos_id]
            mask += [0] + [learn] * (len(content) + 1)
        if add_generation_prompt:
            ids.append(self.special_tokens["<|assistant|>"])
            mask.append(0)
        return ids, mask

    def chat_prompt(self, user_text: str, system: str | None = None) -> list[int]:
        """Ids to generate an assistant reply from (ends with <|assistant|>)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
        return self.encode_chat(messages, add_generation_prompt=True)[0]

    # -- training --------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        out_dir: Path | str,
        seed: int = 0,
        max_sentences: int = 2_000_000,
        character_coverage: float = 0.9995,
        num_threads: int = 1,
    ) -> "Tokenizer":
        """Train a BPE model on `texts` (in the order given) and write a tokenizer dir.

        Deterministic: the input order is kept (no shuffling, the first `max_sentences`
        lines are used), the random generator is seeded, and training is single-threaded
        unless `num_threads` says otherwise.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_sentences(texts), model_writer=model,
                model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
                byte_fallback=True, split_digits=True, user_defined_symbols=list(SPECIAL_TOKENS),
                normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
                allow_whitespace_only_pieces=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                character_coverage=character_coverage, input_sentence_size=max_sentences,
                shuffle_input_sentence=False, max_sentence_length=_MAX_SENTENCE_BYTES,
                num_threads=num_threads, minloglevel=2,
            )
        except RuntimeError as exc:
            raise UserError(f"tokenizer training failed: {exc} (is the corpus empty or vocab_size too small?)") from None
        (out / "tokenizer.model").write_bytes(model.getvalue())
        tokenizer = cls(out)
        tokenizer.save_metadata()
        return tokenizer

    def save_metadata(self) -> None:
        """Write special_tokens.json and the HF files next to tokenizer.model."""
        (self.directory / "special_tokens.json").write_text(json.dumps(self.special_tokens, indent=2) + "\n")
        export_hf(self, self.directory)


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """Lines of the documents (sentencepiece learns within lines), long ones cut at spaces."""
    for text in texts:
        for line in text.split("\n"):
            while len(line.encode("utf-8")) > _MAX_SENTENCE_BYTES // 2:
                cut = line.rfind(" ", 0, _MAX_SENTENCE_BYTES // 8) + 1 or _MAX_SENTENCE_BYTES // 8
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


def hf_backend(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` that encodes exactly as the sentencepiece model."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tokenizer.sp
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    skip = set(SPECIAL_TOKENS)
    merges = []
    for piece, pid in vocab.items():
        if len(piece) < 2 or piece in skip or sp.is_byte(pid) or sp.is_unknown(pid) or sp.is_control(pid):
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                # sentencepiece BPE applies the merge whose result scores highest, i.e.
                # has the lowest id; HF applies the lowest-ranked merge: rank by that id.
                merges.append((pid, vocab[left], vocab[right], left, right))
    merges.sort()
    model = models.BPE(
        vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=sp.id_to_piece(sp.unk_id()),
        byte_fallback=True, fuse_unk=True,
    )
    backend = HFTokenizer(model)
    backend.normalizer = normalizers.Replace(" ", "▁")
    # sentencepiece (allow_whitespace_only_pieces) starts a word at the first space of a
    # run: a run of spaces and the text after it form one word ("▁▁▁def"), a run at the
    # end stands alone. Digits are then split one per piece, as split_digits does.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("▁+[^▁]*|[^▁]+"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    return backend


def export_hf(tokenizer: Tokenizer, directory: Path) -> None:
    """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) for
    `AutoTokenizer.from_pretrained(directory)`, with the chat template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=hf_backend(tokenizer),
        bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", unk_token="<unk>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(directory))
    # transformers 5 writes its own class name ("TokenizersBackend"); the generic fast
    # class name loads in transformers 4.x as well as 5.x.
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
