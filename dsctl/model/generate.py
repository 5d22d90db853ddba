"""Batched sampling and greedy MTP self-speculative decoding, driven on the one decoding
core (`decode.DecodeBatch`: rows over one latent cache, left-padded to one slot clock).

Prompts are prefilled with the explicit attention path; each new token then runs the
absorbed path against the cached c_kv/k_pe. Speculative mode (greedy only): MTP module 1
drafts the token after next and the main model checks [next, draft] in one forward; a
rejected draft's slot stays masked, so rows of one batch can accept differently. Every
row ends by one `StopRule`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .decode import DecodeBatch
from .model import DeepSeekV3


@dataclass
class GenerationResult:
    """What `generate` returns, one entry per prompt."""

    tokens: list[list[int]]
    """Generated ids (prompt excluded), including the stop token / the token completing a stop string."""
    finish_reasons: list[str]
    """"stop" (a stop token or stop string) or "length" (see FINISH_REASONS)."""
    texts: list[str] | None = None
    """Decoded completions (when a decoder was given), ending with the stop string that ended them."""
    acceptance_rate: float | None = None
    """Speculative mode: accepted MTP drafts / drafts proposed."""
    forward_passes: int = 0
    """Main-model forward passes after the prefill."""


FINISH_REASONS = ("stop", "length", "cancelled")
"""Why a row ended, for every caller alike: a stop token or stop string ("stop"), the
token budget ("length"), or a serving client that went away ("cancelled")."""


@dataclass(frozen=True)
class StopRule:
    """When a completion ends, checked after each new token: a stop token, a stop string
    in its text, or `max_new_tokens`. One rule for `generate`, `stream` and the serving
    engine. Stop strings are looked for in the decoded *tail* only — the last tokens that
    can hold the longest one — so the check costs the same at token 10 and token 10,000."""

    max_new_tokens: int
    stop_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None

    def __post_init__(self) -> None:
        if self.stop_strings and self.decode is None:
            raise ValueError("stop_strings need a decode function or tokenizer (decode=...) to read the text.")

    @property
    def tail(self) -> int:
        """Tokens whose text can hold a stop string that the newest token completes: a
        token is at least one byte (byte fallback), a character at most four."""
        return 4 * max(len(s) for s in self.stop_strings) + 1 if self.stop_strings else 0

    def finish(self, tokens: list[int]) -> str | None:
        """"stop", "length" or None (go on), once `tokens[-1]` has been appended."""
        if tokens[-1] in self.stop_token_ids:
            return "stop"
        if self.stop_strings:
            text = self.decode(tokens[-self.tail:])
            if any(s in text for s in self.stop_strings):
                return "stop"
        return "length" if len(tokens) >= self.max_new_tokens else None


@dataclass
class _Rows:
    """Per-row output of one `generate` call under one StopRule."""

    rule: StopRule
    batch: int

    def __post_init__(self) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(self.batch)]
        self.reasons: list[str | None] = [None] * self.batch

    def emit(self, row: int, token: int) -> None:
        """Append a token to an unfinished row and decide whether the row is done."""
        if self.reasons[row] is None:
            self.tokens[row].append(token)
            self.reasons[row] = self.rule.finish(self.tokens[row])

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.reasons)


def _as_decoder(decode: Any) -> Callable[[list[int]], str] | None:
    """Accept a function ids -> str or a tokenizer-like object with .decode(ids)."""
    if decode is None or callable(getattr(decode, "decode", None)):
        return None if decode is None else decode.decode
    return decode


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, vocab) -> (B,) ids: argmax at temperature 0, else top-k / nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Softmax again after masking rather than renormalizing these probabilities: the
        # division would round differently and redraw every sampled stream.
        logits = logits.masked_fill(~nucleus(logits.softmax(-1), top_p), float("-inf"))
    uniform = torch.rand(logits.shape[0], 1, generator=generator, dtype=torch.float64, device=logits.device)
    return inverse_cdf(logits.softmax(-1), uniform)


NUCLEUS_PREFIXES = (8, 64)
"""How many of a row's most likely tokens `nucleus` ranks, in turn, before the whole
vocabulary. A trained mini_r1 checkpoint's nucleus at T = 0.6, top-p 0.95 is 1 token at
the median and at most 3 (the pretrained base's: 10 at the 99th percentile); `topk` of 8
costs a sixth of `topk` of 64 at 256 × 1,024, which costs a fifth of a sort."""


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, vocab) probabilities -> (B, vocab) bool: the tokens inside each row's top-p
    nucleus. A token is dropped when the tokens ranked above it already hold more than
    `top_p`; the most likely token always stays.

    Ranking a whole vocabulary is a sort, 8 ms at 256 rows × 1,024 tokens on CPU, four
    times the rest of a sampling step, where a nucleus is a few tokens. So `topk` ranks
    each row's first `NUCLEUS_PREFIXES[0]` tokens; a row whose nucleus runs past them gets
    the longer prefix, or, when its top token is too small for that prefix to reach
    `top_p` (a flat distribution: an untrained model, a high temperature), a full sort.
    The mask equals a full sort's: the cumulative sums of a prefix are the first terms of
    the full ones.
    """
    vocab = probs.shape[-1]
    short, long = (min(k, vocab) for k in NUCLEUS_PREFIXES)
    keep, past, top = _ranked_prefix(probs, short, top_p)
    if not bool(past.any()):  # the usual case: every row's nucleus ended inside the short prefix
        return keep
    rows = past.nonzero().squeeze(-1)
    # The long - 1 most likely tokens hold at most (long - 1) · top, so a row with
    # (long - 1) · top <= top_p keeps its long-th token too: rank it in full at once.
    reachable = top[rows] * (long - 1) > top_p
    medium, flat = rows[reachable], rows[~reachable]
    if len(medium):
        keep[medium], past, _ = _ranked_prefix(probs[medium], long, top_p)
        flat = torch.cat((flat, medium[past]))
    if len(flat) == len(probs):  # every row flat (a high temperature): sort in place, no row copies
        return _ranked_prefix(probs, vocab, top_p)[0]
    if len(flat):
        keep[flat] = _ranked_prefix(probs[flat], vocab, top_p)[0]
    return keep


def _ranked_prefix(probs: torch.Tensor, k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nucleus among each row's k most likely tokens; which rows' nucleus may go on
    past them (their k-th token is still inside, and there are more); each row's top
    probability."""
    top, index = probs.topk(k, dim=-1)
    inside = top.cumsum(-1) - top <= top_p
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, index, inside)
    return keep, inside[:, -1] & (k < probs.shape[-1]), top[:, 0]


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(B, vocab) probabilities and (B, 1) uniforms in [0, 1) -> (B,) token ids: each row's
    token whose cumulative-probability interval holds its uniform.

    One random number a row. `torch.multinomial` draws one exponential per vocabulary entry
    instead (25 ns each on CPU): 6.8 ms of a 25 ms decode step at 256 rows × 1,024 tokens,
    where this takes 0.2–2 ms (the upper end when its 2 MB sum is freshly mapped memory).
    The cumulative sum runs in FP64, so a token's interval is its probability to ~1e-16
    however far down the vocabulary it sits; a token of probability 0 has an empty interval
    and is never drawn (the first cumulative sum above the target marks a token whose own
    probability is positive, and the target stays below the total).
    """
    cdf = probs.cumsum(-1, dtype=torch.float64)  # summed in FP64 without an FP64 copy of probs
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()):
        raise ValueError("cannot sample from non-finite probabilities: the model's logits hold NaN or inf")
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


@torch.inference_mode()  # like no_grad, minus autograd's per-op version bookkeeping
def generate(model: DeepSeekV3, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_token_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
             decode: Any = None, seed: int = 0, speculative: bool = False) -> GenerationResult:
    """Complete every prompt (a list of token ids) with up to max_new_tokens tokens.

    temperature 0 is greedy. stop_strings need `decode` (ids -> str, or a tokenizer with
    .decode). The same seed gives the same samples. speculative=True uses MTP drafts
    (greedy only) and gives exactly the greedy output, with fewer forward passes.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least one token.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    decoder = _as_decoder(decode)
    if speculative and (temperature > 0 or len(model.mtp) == 0):
        raise ValueError("speculative decoding needs temperature=0 and a model with MTP modules.")
    rows = _Rows(StopRule(max_new_tokens, frozenset(stop_token_ids), tuple(stop_strings), decoder), len(prompts))
    was_training = model.training
    model.eval()  # no MoE load counting or balance loss while sampling
    try:
        run = _speculative_loop if speculative else _sampling_loop
        result = run(model, [list(p) for p in prompts], rows, temperature, top_k, top_p, seed)
    finally:
        model.train(was_training)
    if decoder is not None:
        result.texts = [decoder(t) for t in result.tokens]
    return result


def _sampled_tokens(model, prompts, max_new_tokens, temperature, top_k, top_p, seed) -> Iterator[torch.Tensor]:
    """(B,) ids, one step at a time; the forward that feeds a step back runs only when the
    caller asks for the next one, so a caller that stops early wastes no pass."""
    batch = DecodeBatch(model)
    out, _ = batch.join(prompts, extra=max_new_tokens)
    generator = torch.Generator(device=out.logits.device).manual_seed(seed)
    logits = out.logits[:, -1]
    for _ in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_k, top_p, generator)
        yield tok
        logits = batch.step(tok)  # finished rows keep decoding too; their tokens are ignored


def _sampling_loop(model, prompts, rows: _Rows, temperature, top_k, top_p, seed) -> GenerationResult:
    steps = 0
    for tok in _sampled_tokens(model, prompts, rows.rule.max_new_tokens, temperature, top_k, top_p, seed):
        steps += 1
        for row, t in enumerate(tok.tolist()):
            rows.emit(row, t)
        if rows.done:
            break
    return GenerationResult(tokens=rows.tokens, finish_reasons=list(rows.reasons), forward_passes=steps - 1)


def stream(model: DeepSeekV3, prompt: Sequence[int], *, max_new_tokens: int = 64, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, stop_token_ids: Sequence[int] = (),
           seed: int = 0) -> Iterator[int]:
    """Complete one prompt token by token, yielding each id as it is sampled (the stop
    token included, then it ends): the same tokens `generate` returns for the same seed."""
    if not prompt:
        raise ValueError("stream needs a prompt of at least one token.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            rule, tokens = StopRule(max_new_tokens, frozenset(stop_token_ids)), []
            for tok in _sampled_tokens(model, [list(prompt)], max_new_tokens, temperature, top_k, top_p, seed):
                tokens.append(int(tok[0]))
                yield tokens[-1]
                if rule.finish(tokens):
                    return
    finally:
        model.train(was_training)


def _speculative_loop(model, prompts, rows: _Rows, temperature, top_k, top_p, seed) -> GenerationResult:
    batch = DecodeBatch(model, mtp=True)
    # Each verify step uses two slots: [next token, draft]; room for the worst case.
    out, draft = batch.join(prompts, extra=2 * rows.rule.max_new_tokens + 2, with_draft=True)
    cur = out.logits[:, -1].argmax(-1)  # the first generated token, not yet fed to the model
    for row, t in enumerate(cur.tolist()):
        rows.emit(row, t)
    proposed, accepted, passes = 0, 0, 0
    while not rows.done:
        out = batch.verify(torch.stack((cur, draft), 1))
        passes += 1
        y = out.logits.argmax(-1)  # (B, 2): main-model greedy after cur, after draft
        ok = y[:, 0] == draft
        batch.drop_second(~ok)
        active = [r is None for r in rows.reasons]
        proposed += sum(active)
        accepted += sum(a and o for a, o in zip(active, ok.tolist()))
        for row, (y0, y1, good) in enumerate(zip(y[:, 0].tolist(), y[:, 1].tolist(), ok.tolist())):
            rows.emit(row, y0)
            if good:
                rows.emit(row, y1)
        mtp_logits = batch.draft(out, torch.stack((y[:, 0], torch.where(ok, y[:, 1], y[:, 0])), 1))
        draft = torch.where(ok, mtp_logits[:, 1].argmax(-1), mtp_logits[:, 0].argmax(-1))
        cur = torch.where(ok, y[:, 1], y[:, 0])
    return GenerationResult(tokens=rows.tokens, finish_reasons=list(rows.reasons),
                            acceptance_rate=accepted / max(proposed, 1), forward_passes=passes)
