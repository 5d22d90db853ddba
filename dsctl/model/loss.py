"""The training loss: next-token CE + λ · mean MTP CE + α-weighted balance loss.

Labels follow the Hugging Face convention: `labels` is aligned with `input_ids` and the
loss shifts internally (position t is scored against labels[t+1]; MTP depth k against
labels[t+k+1]). −100 marks positions that are not scored (SFT prompts, padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import DeepSeekV3

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    """The total loss and its parts (all scalars; mtp_loss is 0 without MTP)."""

    loss: torch.Tensor
    """lm_loss + mtp_weight · mtp_loss + balance_loss: what to backpropagate."""
    lm_loss: torch.Tensor
    """Mean next-token cross-entropy over scored positions."""
    mtp_loss: torch.Tensor
    """(1/D) Σ_k cross-entropy of MTP depth k (unweighted)."""
    balance_loss: torch.Tensor
    """α-weighted sequence-wise MoE balance loss summed over MoE layers."""
    n_tokens: int
    """Number of positions scored by the main head."""
    logits: torch.Tensor | None = None
    """With return_logits: the main head's logits at the scored positions, (n_tokens, vocab)
    in row-major order (what a distillation term compares with a teacher's)."""


def _targets(labels: torch.Tensor, offset: int, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """labels[:, t+offset] for t < T-offset; −100 where the target lies in another document."""
    T = labels.shape[1]
    target = labels[:, offset:]
    if doc_ids is not None:
        target = target.masked_fill(doc_ids[:, offset:] != doc_ids[:, : T - offset], IGNORE_INDEX)
    return target


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, offset: int,
                          doc_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Mean CE of logits[:, t] against labels[:, t+offset]; (loss, scored count).

    With doc_ids, a target in a different document than its source position is not scored.
    """
    T = labels.shape[1]
    if T <= offset:
        return logits.sum() * 0.0, 0
    target = _targets(labels, offset, doc_ids)
    pred = logits[:, : T - offset]
    total = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    count = int((target != IGNORE_INDEX).sum())
    return total / max(count, 1), count


def scored_positions(labels: torch.Tensor, offset: int, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, T − offset) mask of the positions t whose target labels[t + offset] is scored."""
    T = labels.shape[1]
    return _targets(labels, offset, doc_ids) != IGNORE_INDEX if T > offset else labels[:, :0] != IGNORE_INDEX


def _head_cross_entropy(head: torch.nn.Module, norm: torch.nn.Module, hidden: torch.Tensor,
                        labels: torch.Tensor, offset: int,
                        doc_ids: torch.Tensor | None) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """shifted_cross_entropy, but the output head runs only on positions that are scored
    (SFT prompts and padding cost no vocab projection); also returns those logits."""
    T = labels.shape[1]
    target = _targets(labels, offset, doc_ids) if T > offset else labels[:, :0]
    scored = target != IGNORE_INDEX
    count = int(scored.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0, None
    logits = head(norm(hidden[:, : T - offset][scored]))
    return F.cross_entropy(logits.float(), target[scored], reduction="sum") / count, count, logits


def compute_loss(model: DeepSeekV3, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                 attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                 doc_ids: torch.Tensor | None = None, mtp_weight: float | None = None,
                 return_logits: bool = False) -> LossOutput:
    """One forward pass and the full DeepSeek-V3 training loss.

    labels default to input_ids; padding (attention_mask 0) is never scored.
    mtp_weight λ defaults to config.mtp_loss_weight; 0 skips the MTP modules entirely.
    return_logits keeps the main head's logits at the scored positions (`LossOutput.logits`).
    """
    labels = input_ids if labels is None else labels
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    weight = model.config.mtp_loss_weight if mtp_weight is None else mtp_weight
    use_mtp = weight > 0 and len(model.mtp) > 0
    out = model.outputs(input_ids, attention_mask=attention_mask, position_ids=position_ids, doc_ids=doc_ids,
                        mtp=use_mtp, compute_logits=False)
    return loss_from_hidden(model.lm_head, model.norm, model.mtp if use_mtp else [], out.hidden_states,
                            out.mtp_hidden_states, out.balance_loss, labels, doc_ids, weight, return_logits)


def loss_from_hidden(lm_head: torch.nn.Module, norm: torch.nn.Module, mtp_modules, hidden: torch.Tensor,
                     mtp_hiddens: list[torch.Tensor], balance_loss: torch.Tensor, labels: torch.Tensor,
                     doc_ids: torch.Tensor | None, mtp_weight: float, return_logits: bool = False) -> LossOutput:
    """The loss of `compute_loss` from the block outputs: what the last pipeline stage,
    which holds the head and the MTP modules, computes from the hidden state it receives."""
    lm_loss, n_tokens, logits = _head_cross_entropy(lm_head, norm, hidden, labels, 1, doc_ids)
    mtp_loss = lm_loss.new_zeros(())
    if len(mtp_modules):
        depth_losses = [_head_cross_entropy(lm_head, module.shared_head.norm, h, labels, k, doc_ids)[0]
                        for k, (module, h) in enumerate(zip(mtp_modules, mtp_hiddens), start=2)]
        mtp_loss = torch.stack(depth_losses).mean()
    loss = lm_loss + mtp_weight * mtp_loss + balance_loss
    return LossOutput(loss=loss, lm_loss=lm_loss, mtp_loss=mtp_loss, balance_loss=balance_loss,
                      n_tokens=n_tokens, logits=logits if return_logits else None)
