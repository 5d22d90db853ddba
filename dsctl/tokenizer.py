"""Tokenizers: dsctl's own sentencepiece BPE (byte fallback, reserved chat/reasoning
tokens, HF export) for models dsctl pretrains, and an imported model's Hugging Face
tokenizer used as it is, behind one interface (`ChatTokenizer`).

    tok = Tokenizer.train(texts, vocab_size=4096, out_dir=Path("tok"), seed=0)
    tok = load_tokenizer(Path("tok"))              # Tokenizer or HFTokenizer, by the files there
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

An imported checkpoint keeps its own tokenizer: tokenizer.json (the `tokenizers`
library's file) and tokenizer_config.json (bos/eos/pad and usually a chat template, or a
chat_template.jinja beside it). `HFTokenizer` encodes and decodes with tokenizer.json as
it is and renders chats with the model's own template; a tokenizer without one gets
dsctl's chat layout above (`CHAT_TEMPLATE`), its role headers then plain text between the
tokenizer's own bos/eos. The assistant mask comes from rendering prefixes: assistant
message i is the text between render(messages[:i], generation prompt) and
render(messages[:i+1]), and the mask is 1 on its content and on what the template writes
after the content up to and including the first special token (the end of turn:
<｜end▁of▁sentence｜>, <|im_end|>), 0 elsewhere. The text is tokenized span by span, cut
where a reply starts and ends, as generation sees it: a reply's tokens start right after
the prompt's. A template that renders a turn differently once more follows, or rewrites
a past reply (DeepSeek-R1's drops its <think> part), is refused, naming the message.

`load_tokenizer(dir)` picks by the files: tokenizer.model, dsctl's own (its directories
also hold a tokenizer.json made from it), else tokenizer.json, an imported one.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator, Sequence

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


class ChatTokenizer(ABC):
    """What dsctl uses of a tokenizer, whichever kind is behind it."""

    directory: Path
    bos_id: int | None
    """None when the tokenizer has no bos token (some imported ones)."""
    eos_id: int
    pad_id: int
    """The pad token, or eos when the tokenizer has none (pad positions are masked anyway)."""
    special_tokens: dict[str, int]
    """piece -> id of the tokens matched atomically in text (may be empty)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of `text`, no bos/eos added."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, special tokens kept as text."""

    @abstractmethod
    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask) of a conversation: the mask is 1 on what the model must
        learn to write (assistant content and its end-of-turn token), 0 elsewhere."""

    def chat_prompt(self, user_text: str, system: str | None = None) -> list[int]:
        """Ids to generate an assistant reply from (ends with the generation prompt)."""
        messages = (([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": user_text}])
        return self.encode_chat(messages, add_generation_prompt=True)[0]


class Tokenizer(ChatTokenizer):
    """A loaded dsctl tokenizer directory (see the module docstring)."""

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
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
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
            raise UserError(f"tokenizer training failed: {exc} "
                            "(is the corpus empty or vocab_size too small?)") from None
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
    from tokenizers import Tokenizer as BackendTokenizer

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
    backend = BackendTokenizer(model)
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


class HFTokenizer(ChatTokenizer):
    """An imported model's Hugging Face tokenizer directory, used as it is (see the module
    docstring): tokenizer.json encodes and decodes, the model's chat template renders."""

    def __init__(self, directory: Path):
        from transformers import PreTrainedTokenizerFast

        self.directory = Path(directory)
        if not (self.directory / "tokenizer.json").is_file():
            raise UserError(f"{self.directory} is not a Hugging Face tokenizer directory: tokenizer.json is missing")
        # The generic fast class runs tokenizer.json as written, whatever class
        # tokenizer_config.json names (transformers 5 rebuilds some named classes' pipelines).
        self.hf = PreTrainedTokenizerFast.from_pretrained(str(self.directory), local_files_only=True)
        self.backend = self.hf.backend_tokenizer
        if self.hf.eos_token_id is None:
            raise UserError(f"{self.directory / 'tokenizer_config.json'}: no eos_token; dsctl needs one to end a reply")
        self.bos_id, self.eos_id = self.hf.bos_token_id, self.hf.eos_token_id
        self.pad_id = self.eos_id if self.hf.pad_token_id is None else self.hf.pad_token_id
        self.special_tokens = self.hf.get_added_vocab()
        self._end_of_turn_ids = {i for i, token in self.hf.added_tokens_decoder.items() if token.special}
        # apply_chat_template's chat_template: None is the model's own, dsctl's layout stands in for a missing one
        self._template = None if self.hf.chat_template else CHAT_TEMPLATE

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask) of a conversation in the model's chat template."""
        text = self._render(messages, add_generation_prompt)
        ids: list[int] = []
        mask: list[int] = []
        done = 0  # characters of `text` already tokenized
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            if i == 0:
                raise ValueError("message 0: a conversation starts with a user or system message, "
                                 "not an assistant reply")
            start = self._prefix_end(text, messages[:i], True, f"the conversation before message {i} (assistant) "
                                     "with the generation prompt")
            end = self._prefix_end(text, messages[:i + 1], False, f"the conversation through message {i} (assistant)")
            if not done <= start <= end:
                raise UserError(f"{self.directory}: the chat template does not render message {i} (assistant) "
                                "after its generation prompt; dsctl cannot tell which tokens are the reply")
            before = self.encode(text[done:start])
            reply, learn = self._reply(text[start:end], message.get("content", ""), i)
            ids += before + reply
            mask += [0] * len(before) + learn
            done = end
        rest = self.encode(text[done:])
        return ids + rest, mask + [0] * len(rest)

    def _render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.hf.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                           chat_template=self._template)

    def _prefix_end(self, text: str, messages: Sequence[dict[str, str]], add_generation_prompt: bool,
                    what: str) -> int:
        """Where `messages` end in `text`, the rendering of the whole conversation."""
        prefix = self._render(messages, add_generation_prompt)
        if not text.startswith(prefix):
            raise UserError(
                f"{self.directory}: the chat template does not render conversations prefix-consistently: {what} "
                f"ends in {prefix[-60:]!r}, which the whole conversation does not start with, so the reply's tokens "
                "cannot be told apart (the template changes a turn once more follow, or its generation prompt adds "
                "text a written reply lacks, e.g. '<think>\\n'); give the model a template that renders each turn "
                "the same whatever follows it")
        return len(prefix)

    def _reply(self, turn: str, content: str, index: int) -> tuple[list[int], list[int]]:
        """(ids, mask) of an assistant turn's text: 1 through the content, then through the
        first special token after it (the end of turn), 0 on what follows (e.g. a newline)."""
        for written in (content, content.strip()):  # a template may trim the content
            at = turn.find(written)
            if at >= 0:
                content_end = at + len(written)
                break
        else:
            raise UserError(f"{self.directory}: the chat template rewrites message {index} (assistant): its turn "
                            f"{turn[:80]!r} does not contain its content, so training on it would teach another "
                            "reply (DeepSeek-R1's template, for one, drops the <think> part of past replies)")
        encoding = self.backend.encode(turn, add_special_tokens=False)
        # offsets are (start, end) characters of `turn`, non-decreasing along the tokens
        n_content = sum(1 for start, _ in encoding.offsets if start < content_end)
        last = next((k for k in range(n_content, len(encoding.ids)) if encoding.ids[k] in self._end_of_turn_ids),
                    n_content - 1)
        return encoding.ids, [1] * (last + 1) + [0] * (len(encoding.ids) - last - 1)


VOCABULARY_FILES = ("tokenizer.model", "tokenizer.json")
"""The file that defines a tokenizer directory's ids, by kind, dsctl's own first (its
directories also hold a tokenizer.json made from its tokenizer.model)."""


def vocabulary_file(directory: Path) -> Path | None:
    """`directory`'s tokenizer.model, else its tokenizer.json, else None."""
    return next((Path(directory) / name for name in VOCABULARY_FILES if (Path(directory) / name).is_file()), None)


def load_tokenizer(directory: Path | str) -> ChatTokenizer:
    """dsctl's `Tokenizer` where `directory` has tokenizer.model, else the `HFTokenizer`
    of its tokenizer.json; UserError when it has neither."""
    found = vocabulary_file(Path(directory))
    if found is None:
        raise UserError(f"{directory} has no tokenizer: neither tokenizer.model (dsctl's sentencepiece tokenizer) "
                        "nor tokenizer.json (a Hugging Face fast tokenizer)")
    return Tokenizer(found.parent) if found.name == "tokenizer.model" else HFTokenizer(found.parent)
