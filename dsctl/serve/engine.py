"""One decode loop shared by every request: continuous batching over the MLA latent cache.

`DecodeEngine.submit(prompt, params)` queues a request and returns a `Request` whose
tokens arrive as they are sampled. A background thread runs the loop: a request that
arrives while others decode is prefilled alone, then joins the batch at the next step;
a finished (or cancelled) one leaves at once. The batch shares one `LatentCache` whose
rows are left-padded to a common slot clock: joining shifts the rows right so every
row's last token sits at the clock, and the attention mask hides the padding. Positions
count a row's real tokens, so each row decodes as it would alone, and each row samples
with its own generator, seeded from its request: at temperature 0, and at any
temperature with the same seed, an answer equals what the same request gets alone.

Greedy requests on a checkpoint with MTP modules decode speculatively (DeepSeek-V3 §5.4.3):
MTP drafts the token after next, and one forward verifies [next, draft] for the price of
about one step, so an accepted draft is a token for free; the answer is still exactly the
greedy one. While any such row is active every step feeds each row two slots; a sampled
row keeps its second slot masked and takes one token, and a rejected draft's slot is
masked the same way, so all rows keep one slot clock.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dsctl.model.generate import StopRule, sample_next
from dsctl.model.mla import LatentCache


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    """Stop strings: the reply ends once its text contains one (which is then cut off)."""


@dataclass
class Request:
    """A submitted request; `on_event` gets ("token", id) per emitted token, then ("done",
    reason) with a reason of dsctl.model.generate.FINISH_REASONS, or ("error", message) if
    decoding failed; it is called from the engine's thread."""

    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[tuple[str, object]], None]
    tokens: list[int] = field(default_factory=list)
    """Every sampled id, the stop token included."""
    cancelled: bool = False
    finish: str | None = None
    """"stop" or "length" once the request is done."""
    generator: torch.Generator | None = None
    rule: StopRule | None = None
    """The request's stop rule (dsctl.model.generate.StopRule), set when it is admitted."""
    draft: int | None = None
    """The MTP draft of the token after `tokens[-1]` (greedy rows on an MTP model)."""

    def cancel(self) -> None:
        """Leave the batch at the next step (a client that went away)."""
        self.cancelled = True


class DecodeEngine:
    """Continuous batching for one model; see the module docstring."""

    def __init__(self, model, decode: Callable[[list[int]], str], max_batch: int = 16,
                 speculative: bool = True) -> None:
        self.model, self.decode, self.max_batch = model.eval(), decode, max_batch
        self.pending: queue.Queue[Request] = queue.Queue()
        self.active: list[Request] = []
        self.steps = 0
        """Batched decode steps run so far (tests count them)."""
        self.largest_batch = 0
        self.speculative = speculative and len(model.mtp) > 0
        """Whether greedy requests decode with MTP drafts (asked for, and the model has MTP)."""
        self.drafts_proposed = self.drafts_accepted = 0
        self._layers = model.config.num_hidden_layers + (1 if self.speculative else 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dsctl-decode", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams,
               on_event: Callable[[tuple[str, object]], None]) -> Request:
        request = Request(list(prompt), params, on_event)
        self.pending.put(request)
        return request

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    # -- the loop (one thread) -------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    if not self.active:  # idle: wait for the next request
                        self._admit(self.pending.get(timeout=0.05))
                    while len(self.active) < self.max_batch and not self.pending.empty():
                        self._admit(self.pending.get())
                    if self.active:
                        self._step()
                except queue.Empty:
                    continue
                except Exception as exc:  # noqa: BLE001 (a failed step must not stop the loop)
                    self._fail_active(f"{type(exc).__name__}: {exc}")

    def _fail_active(self, message: str) -> None:
        """End every request in the batch with an error; the loop serves the next ones."""
        for request in self.active:
            request.on_event(("error", message))
        self.active = []

    def _admit(self, request: Request) -> None:
        """Prefill `request` alone, emit its first token, and add its row to the batch."""
        if request.cancelled:
            request.on_event(("done", "cancelled"))
            return
        request.generator = torch.Generator().manual_seed(request.params.seed)
        p = request.params
        request.rule = StopRule(p.max_tokens, frozenset(p.stop_token_ids), p.stop, self.decode)
        cache = LatentCache(self.model.config, self._layers, 1, len(request.prompt))
        try:
            out = self.model.outputs(torch.tensor([request.prompt]), cache=cache, logits_to_keep=1)
            logits = out.logits[0, -1]
            if self.speculative and request.params.temperature == 0:
                # MTP prefill: slot i pairs the main hidden state at i with the token after it
                # (the last slot with the first answer token, greedy, so known already).
                after = torch.tensor([[*request.prompt[1:], int(logits.argmax())]])
                drafts, _ = self.model.mtp_step(0, out.hidden_states, after, attention_mask=None,
                                                cache=cache, cache_start=0)
                request.draft = int(drafts[0, -1].argmax())
        except Exception as exc:  # noqa: BLE001 (only this request failed; the batch goes on)
            request.on_event(("error", f"{type(exc).__name__}: {exc}"))
            return
        self._join(request, cache)
        self._emit(len(self.active) - 1, logits)
        self._finish_rows()

    def _join(self, request: Request, row: LatentCache) -> None:
        """Rebuild the batch cache with the new row: the batch's slots and the row's prompt
        both end at the new clock, the longer of the two, so every row's last token sits
        there; the slots a shorter side lacks stay masked."""
        old = self.batch.length if self.active else 0
        new = row.length
        clock = max(old, new)
        # A speculative step takes two slots per emitted token at worst.
        per_token = 2 if self.speculative else 1
        room = clock + per_token * max(r.params.max_tokens - len(r.tokens) for r in [*self.active, request]) + 2
        batch = LatentCache(self.model.config, row.kv.shape[0], len(self.active) + 1, room, dtype=row.kv.dtype)
        mask = torch.zeros(len(self.active) + 1, room, dtype=torch.long)
        if self.active:
            batch.kv[:, :-1, clock - old:clock] = self.batch.kv[:, :, :old]
            mask[:-1, clock - old:clock] = self.mask[:, :old]
        batch.kv[:, -1, clock - new:clock] = row.kv[:, 0, :new]
        mask[-1, clock - new:clock] = 1
        batch.length = clock
        self.batch, self.mask = batch, mask
        self.active.append(request)
        self.largest_batch = max(self.largest_batch, len(self.active))

    def _leave(self, finished: list[int]) -> None:
        keep = [i for i in range(len(self.active)) if i not in finished]
        self.active = [self.active[i] for i in keep]
        if keep:
            index = torch.tensor(keep)
            self.batch.kv = self.batch.kv.index_select(1, index)
            self.mask = self.mask.index_select(0, index)

    def _step(self) -> None:
        """Feed every row its last token, sample the next, let finished rows leave."""
        if any(r.draft is not None for r in self.active):
            self._speculative_step()
            return
        clock = self.batch.length
        if clock >= self.batch.max_slots:  # cannot happen: rows leave before their budget ends
            raise RuntimeError("decode batch ran out of cache slots")
        last = torch.tensor([[r.tokens[-1]] for r in self.active])
        self.mask[:, clock] = 1
        logits = self.model(last, attention_mask=self.mask[:, :clock + 1], cache=self.batch)[:, -1]
        self.steps += 1
        for i in range(len(self.active)):
            self._emit(i, logits[i])
        self._finish_rows()

    def _speculative_step(self) -> None:
        """One verify pass over [last token, draft] per row: a greedy row whose draft equals
        the model's next token takes both; a sampled row (draft None) takes one."""
        clock = self.batch.length
        if clock + 2 > self.batch.max_slots:
            raise RuntimeError("decode batch ran out of cache slots")
        fed = torch.tensor([[r.tokens[-1], r.tokens[-1] if r.draft is None else r.draft] for r in self.active])
        self.mask[:, clock:clock + 2] = 1
        out = self.model.outputs(fed, attention_mask=self.mask[:, :clock + 2], cache=self.batch)
        self.steps += 1
        greedy = out.logits.argmax(-1)  # (B, 2): after the last token, after the draft
        kept = []  # per row: whether its second slot holds a token the row keeps
        for i, r in enumerate(self.active):
            accepted = r.draft is not None and int(greedy[i, 0]) == r.draft
            if r.draft is not None:
                self.drafts_proposed += 1
                self.drafts_accepted += accepted
            self._emit(i, out.logits[i, 0])
            if accepted and not r.finish:
                self._emit(i, out.logits[i, 1])
            kept.append(accepted)
        keep = torch.tensor(kept)
        self.mask[~keep, clock + 1] = 0  # a sampled row's second slot, or a rejected draft
        # MTP on both slots; slot clock+1 only matters (and is only visible) where kept.
        after = torch.stack((greedy[:, 0], torch.where(keep, greedy[:, 1], greedy[:, 0])), 1)
        drafts, _ = self.model.mtp_step(0, out.hidden_states, after, attention_mask=self.mask[:, :clock + 2],
                                        cache=self.batch, cache_start=clock)
        drafts = torch.where(keep, drafts[:, 1].argmax(-1), drafts[:, 0].argmax(-1))
        for r, draft in zip(self.active, drafts.tolist()):
            if r.draft is not None:
                r.draft = draft
        self._finish_rows()

    def _finish_rows(self) -> None:
        finished = [i for i, r in enumerate(self.active) if r.finish or r.cancelled]
        for i in finished:
            r = self.active[i]
            r.on_event(("done", r.finish or "cancelled"))
        if finished:
            self._leave(finished)

    def _emit(self, row: int, logits: torch.Tensor) -> None:
        r = self.active[row]
        p = r.params
        token = int(sample_next(logits[None], p.temperature, 0, p.top_p, r.generator)[0])
        r.tokens.append(token)
        r.finish = r.rule.finish(r.tokens)
        if token not in p.stop_token_ids:  # a stop token ends the reply unseen
            r.on_event(("token", token))
