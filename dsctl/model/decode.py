"""The one decoding core: rows that decode together over one MLA latent cache.

    batch = DecodeBatch(model)
    first = batch.join(prompts, extra=64)           # prefill; logits of each row's last position
    logits = batch.step(tokens)                     # feed every row one token -> (B, vocab)
    out = batch.verify(pairs)                       # feed [token, MTP draft] per row
    batch.drop_second(~accepted); drafts = batch.draft(out, next_ids)
    batch.leave(keep)                               # finished rows go

Rows are left-padded to one slot clock (`length`): every row's last token sits at the
same slot, the attention mask hides the padding and the slots a row does not use, and
positions count a row's real tokens, so each row decodes exactly as it would alone.
`join` prefills new prompts together (left-padded among themselves) and, when rows are
already decoding, shifts both sides to end at the later clock. `verify` is the
speculative step (DeepSeek-V3 §5.4.3): MTP module 1 drafts the token after next, one
forward checks [next, draft], and a draft that was not taken keeps its cache slot,
masked out, so rows that accept differently stay on one clock.

`generate` and `stream` (dsctl.model.generate) and the serving engine
(dsctl.serve.engine) drive it; they keep their rows' tokens, stop rules and samplers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .mla import LatentCache
from .model import DeepSeekV3, ModelOutput


class DecodeBatch:
    def __init__(self, model: DeepSeekV3, *, mtp: bool = False) -> None:
        self.model = model
        self.mtp = mtp
        """Whether the cache has a slot layer for MTP module 1 (speculative decoding)."""
        self.layers = model.config.num_hidden_layers + (1 if mtp else 0)
        self.cache: LatentCache | None = None
        self.mask: torch.Tensor | None = None
        """(rows, slots) 1 where a row attends."""

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def length(self) -> int:
        """The slot clock: slots written so far."""
        return 0 if self.cache is None else self.cache.length

    @property
    def free_slots(self) -> int:
        return 0 if self.cache is None else self.cache.max_slots - self.cache.length

    def join(self, prompts: Sequence[Sequence[int]], extra: int, with_draft: bool = False
             ) -> tuple[ModelOutput, torch.Tensor | None]:
        """Prefill `prompts` as new rows after the current ones, with room for `extra` more
        slots past the new clock; returns the prefill's output (logits at each new row's
        last position) and, with `with_draft`, the MTP draft of the token after the greedy
        first one (needs `mtp`)."""
        device = self.model.embed_tokens.weight.device
        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(n, width, dtype=torch.long, device=device)
        mask = torch.zeros(n, width, dtype=torch.long, device=device)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long, device=device)
            mask[row, width - len(p):] = 1
        # Alone, the new rows prefill straight into the batch's cache; beside running rows
        # they prefill into their own, which is then merged on one clock.
        slots = width + extra if self.cache is None else width
        cache = LatentCache(self.model.config, self.layers, n, slots, dtype=self.model.embed_tokens.weight.dtype,
                            device=device)
        full_mask = torch.zeros(n, slots, dtype=torch.long, device=device)
        full_mask[:, :width] = mask
        out = self.model.outputs(ids, attention_mask=full_mask[:, :width], cache=cache, logits_to_keep=1)
        draft = None
        if with_draft:
            first = out.logits[:, -1].argmax(-1)
            # MTP prefill: slot i pairs the main hidden state at i with the token after it
            # (the last slot with the first answer token, greedy, so known already).
            after = torch.cat((ids[:, 1:], first[:, None]), 1)
            drafts, _ = self.model.mtp_step(0, out.hidden_states, after, attention_mask=full_mask[:, :width],
                                            cache=cache, cache_start=0)
            draft = drafts[:, -1].argmax(-1)
        if self.cache is None:
            self.cache, self.mask = cache, full_mask
        else:
            self._merge(cache, full_mask, extra)
        return out, draft

    def _merge(self, new: LatentCache, new_mask: torch.Tensor, extra: int) -> None:
        """The running rows and the new ones in one cache: both sides end at the later clock
        and the slots a shorter side lacks stay masked."""
        old, width = self.cache.length, new.length
        clock = max(old, width)
        rows = self.rows + new.kv.shape[1]
        cache = LatentCache(self.model.config, self.layers, rows, clock + extra, dtype=new.kv.dtype,
                            device=new.kv.device)
        mask = torch.zeros(rows, clock + extra, dtype=torch.long, device=new.kv.device)
        cache.kv[:, :self.rows, clock - old:clock] = self.cache.kv[:, :, :old]
        mask[:self.rows, clock - old:clock] = self.mask[:, :old]
        cache.kv[:, self.rows:, clock - width:clock] = new.kv[:, :, :width]
        mask[self.rows:, clock - width:clock] = new_mask[:, :width]
        cache.length = clock
        self.cache, self.mask = cache, mask

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row one token (B,) -> the next-token logits (B, vocab)."""
        clock = self._reserve(1)
        self.mask[:, clock] = 1
        return self.model(tokens[:, None], attention_mask=self.mask[:, :clock + 1], cache=self.cache)[:, -1]

    def verify(self, pairs: torch.Tensor) -> ModelOutput:
        """Feed each row [token, draft] (B, 2) in one pass: logits after each. Call
        `drop_second` for the rows whose second slot is not kept, then `draft`."""
        clock = self._reserve(2)
        self.mask[:, clock:clock + 2] = 1
        return self.model.outputs(pairs, attention_mask=self.mask[:, :clock + 2], cache=self.cache)

    def drop_second(self, rows: torch.Tensor) -> None:
        """Mask out the verify step's second slot for `rows` (bool, B): a rejected draft's, or
        a sampled row's that took one token. The slot stays in the cache, unseen."""
        self.mask[rows, self.cache.length - 1] = 0

    def draft(self, out: ModelOutput, next_ids: torch.Tensor) -> torch.Tensor:
        """MTP module 1 over the verify step's two slots: (B, 2, vocab) logits of the token
        after each of `next_ids` (B, 2); the second only matters where that slot was kept."""
        start = self.cache.length - 2
        logits, _ = self.model.mtp_step(0, out.hidden_states, next_ids, attention_mask=self.mask[:, :start + 2],
                                        cache=self.cache, cache_start=start)
        return logits

    def leave(self, keep: Sequence[int]) -> None:
        """Keep only rows `keep` (in that order)."""
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(list(keep), device=self.mask.device)
        self.cache.kv = self.cache.kv.index_select(1, index)
        self.mask = self.mask.index_select(0, index)

    def _reserve(self, slots: int) -> int:
        clock = self.cache.length
        if clock + slots > self.cache.max_slots:  # callers size `extra` for their budgets
            raise RuntimeError("decode batch ran out of cache slots")
        return clock
