"""One decode loop shared by every request: continuous batching over the MLA latent cache.

`DecodeEngine.submit(prompt, params)` queues a request and returns a `Request` whose
tokens arrive as they are sampled. A background thread runs the loop: a request that
arrives while others decode is prefilled alone, then joins the batch at the next step;
a finished (or cancelled) one leaves at once. The rows are one `DecodeBatch`
(dsctl.model.decode, the decoding core `generate` drives too): left-padded to a common
slot clock, so each row decodes as it would alone, and each row samples with its own
generator, seeded from its request: at temperature 0, and at any temperature with the
same seed, an answer equals what the same request gets alone.

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

from dsctl.model.decode import DecodeBatch
from dsctl.model.generate import StopRule, sample_next


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
        self.batch = DecodeBatch(model, mtp=self.speculative)
        """The rows decoding now, one per active request, in order."""
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
        self.batch.leave([])

    def _admit(self, request: Request) -> None:
        """Prefill `request` alone, emit its first token, and add its row to the batch."""
        if request.cancelled:
            request.on_event(("done", "cancelled"))
            return
        request.generator = torch.Generator().manual_seed(request.params.seed)
        p = request.params
        request.rule = StopRule(p.max_tokens, frozenset(p.stop_token_ids), p.stop, self.decode)
        # room for every row's remaining budget: a speculative step takes two slots a token
        per_token = 2 if self.speculative else 1
        extra = per_token * max(r.params.max_tokens - len(r.tokens) for r in [*self.active, request]) + 2
        try:
            out, draft = self.batch.join([request.prompt], extra,
                                         with_draft=self.speculative and p.temperature == 0)
        except Exception as exc:  # noqa: BLE001 (only this request failed; the batch goes on)
            request.on_event(("error", f"{type(exc).__name__}: {exc}"))
            return
        request.draft = None if draft is None else int(draft[0])
        self.active.append(request)
        self.largest_batch = max(self.largest_batch, len(self.active))
        self._emit(len(self.active) - 1, out.logits[0, -1])
        self._finish_rows()

    def _step(self) -> None:
        """Feed every row its last token, sample the next, let finished rows leave."""
        if any(r.draft is not None for r in self.active):
            self._speculative_step()
            return
        logits = self.batch.step(torch.tensor([r.tokens[-1] for r in self.active]))
        self.steps += 1
        for i in range(len(self.active)):
            self._emit(i, logits[i])
        self._finish_rows()

    def _speculative_step(self) -> None:
        """One verify pass over [last token, draft] per row: a greedy row whose draft equals
        the model's next token takes both; a sampled row (draft None) takes one."""
        fed = torch.tensor([[r.tokens[-1], r.tokens[-1] if r.draft is None else r.draft] for r in self.active])
        out = self.batch.verify(fed)
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
        self.batch.drop_second(~keep)  # a sampled row's second slot, or a rejected draft
        drafts = self.batch.draft(out, torch.stack((greedy[:, 0], torch.where(keep, greedy[:, 1], greedy[:, 0])), 1))
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
            keep = [i for i in range(len(self.active)) if i not in finished]
            self.active = [self.active[i] for i in keep]
            self.batch.leave(keep)

    def _emit(self, row: int, logits: torch.Tensor) -> None:
        r = self.active[row]
        p = r.params
        token = int(sample_next(logits[None], p.temperature, 0, p.top_p, r.generator)[0])
        r.tokens.append(token)
        r.finish = r.rule.finish(r.tokens)
        if token not in p.stop_token_ids:  # a stop token ends the reply unseen
            r.on_event(("token", token))
