"""Cut a ``DeepSeekV3`` into pipeline stages for DualPipe / 1F1B.

Stage 0 embeds token ids, the last stage ends with the final RMSNorm, the LM head, the
MTP modules and the loss, and the decoder layers are spread over the stages as evenly as
possible (earlier stages get the extra layer, since the last also runs the head). Stages
share their modules with the model (no copy). A pipeline rank builds only the parts its
stages use (``stage_parts`` → ``build_model(config, parts)``); the parts it leaves out
still make their random draws, so a rank's stage equals the same stage of the whole model.

What a stage needs besides the boundary hidden state (token ids for the MTP embeddings,
labels, packed-document ids for the attention mask and RoPE positions) every rank builds
from the batch itself: the executor passes it as keyword arguments (``micro_kwargs``),
so only one tensor crosses each stage boundary, as in DeepSeek's pipeline.

MTP on the last stage needs the embedding, which lives on stage 0: like Megatron's tied
embeddings, the last stage holds a copy (initialised identically) whose gradient is summed
with stage 0's after each step (``tied_parameter_names``). Under DualPipe the two end
ranks hold both stage 0 and the last stage, so one embedding serves both there.

MoE balance loss: each MoE layer returns its α-weighted sequence balance loss. A
non-last stage cannot send it down the pipeline, so it adds the loss's gradient in place
during backward (the Megatron "aux loss auto-scaler" idea): the hidden state passes
through unchanged, and backward also differentiates ``scale · balance`` where ``scale``
is the executor's 1/num_microbatches. The last stage adds its own layers' and MTP's
balance to its loss. Gradients then equal those of ``dsctl.model.compute_loss`` averaged
over micro-batches, and every stage records the values it computed (``stats``) so the
step can log the LM, MTP and balance losses.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import torch
from torch import nn

from dsctl.model import DeepSeekV3, ModelConfig
from dsctl.model.loss import loss_from_hidden
from dsctl.model.model import attention_context, drawn_at_init, model_parts, mtp_hidden_states


class _AddAuxGrad(torch.autograd.Function):
    """Identity on ``hidden``; backward also sends ``scale`` into ``aux`` (an extra loss term)."""

    @staticmethod
    def forward(ctx, hidden, aux, scale):  # noqa: D102 (autograd protocol)
        ctx.scale = scale
        ctx.aux_shape, ctx.aux_dtype = aux.shape, aux.dtype
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        aux_grad = torch.full(ctx.aux_shape, ctx.scale, dtype=ctx.aux_dtype, device=grad.device)
        return grad, aux_grad, None


class PipelineStage(nn.Module):
    """Layers ``[start, end)`` of a ``DeepSeekV3``, plus the embedding (first) or the head,
    MTP and loss (last): ``stage(x, input_ids=..., labels=..., doc_ids=...)`` maps token ids
    (first) or the hidden state to the next hidden state, or to the micro-batch loss (last)."""

    def __init__(self, model: DeepSeekV3, start: int, end: int, first: bool, last: bool) -> None:
        super().__init__()
        config = model.config
        self.mtp_weight = config.mtp_loss_weight
        uses_mtp = last and self.mtp_weight > 0 and config.num_nextn_predict_layers > 0
        self.embed_tokens = model.embed_tokens if first or uses_mtp else None
        self.layers = nn.ModuleList(model.layers[start:end])
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.mtp = model.mtp if uses_mtp else nn.ModuleList()
        self.rotary = model.rotary
        self.first, self.last = first, last
        self.layer_range = (start, end)
        self.loss_scale = 1.0
        """Weight of this micro-batch's loss; set by the pipeline executor via ``set_loss_scale``."""
        self.stats: dict[str, float] = {}
        """Sums over the micro-batches run since ``reset_stats``: balance_loss on every
        stage; lm_loss, mtp_loss and micro_batches on the last."""
        self.reset_stats()

    def set_loss_scale(self, scale: float) -> None:
        """Called by ``ScheduleRunner``: the factor every micro-batch loss is multiplied by."""
        self.loss_scale = scale

    def reset_stats(self) -> None:
        self.stats = {"lm_loss": 0.0, "mtp_loss": 0.0, "balance_loss": 0.0, "micro_batches": 0.0}

    def forward(self, x: torch.Tensor, *, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed_tokens(x) if self.first else x
        dtype = next(self.parameters()).dtype
        ctx = attention_context(self.rotary, dtype, input_ids.shape, input_ids.device, None, None, doc_ids, 0)
        balance = h.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            h, b = layer(h, ctx.rope, ctx.mask, ctx.token_mask)
            balance = balance + b
        if not self.last:
            self.stats["balance_loss"] += float(balance.detach())
            return _AddAuxGrad.apply(h, balance, self.loss_scale) if balance.requires_grad else h
        mtp_hiddens, mtp_balance = mtp_hidden_states(self.mtp, self.embed_tokens, h, input_ids, ctx)
        out = loss_from_hidden(self.lm_head, self.norm, self.mtp, h, mtp_hiddens, balance + mtp_balance,
                               input_ids if labels is None else labels, doc_ids, self.mtp_weight)
        for key in ("lm_loss", "mtp_loss", "balance_loss"):
            self.stats[key] += float(getattr(out, key).detach())
        self.stats["micro_batches"] += 1
        return out.loss


def split_layers(num_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """``[start, end)`` layer ranges, sizes differing by at most one, extra layers first."""
    if num_stages < 1 or num_layers < num_stages:
        raise ValueError(f"cannot cut {num_layers} decoder layers into {num_stages} pipeline stages; "
                         f"use at most {num_layers} stages or a deeper model (num_hidden_layers)")
    base, extra = divmod(num_layers, num_stages)
    bounds, start = [], 0
    for s in range(num_stages):
        end = start + base + (1 if s < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def split_deepseek_v3(model: DeepSeekV3, num_stages: int,
                      indices: Iterable[int] | None = None) -> list[PipelineStage]:
    """Stages ``indices`` (default: all) of the ``num_stages`` cut of ``model``; a partial
    model needs the parts ``stage_parts`` names for them."""
    bounds = split_layers(len(model.layers), num_stages)
    wanted = range(num_stages) if indices is None else indices
    return [PipelineStage(model, *bounds[s], first=s == 0, last=s == num_stages - 1) for s in wanted]


def stage_parts(config: ModelConfig, num_stages: int, indices: Iterable[int]) -> set[str]:
    """The model parts (``dsctl.model.model.model_parts``) stages ``indices`` run."""
    bounds = split_layers(config.num_hidden_layers, num_stages)
    parts: set[str] = set()
    for s in indices:
        parts.update(f"layers.{i}" for i in range(*bounds[s]))
        if s == 0:
            parts.add("embed_tokens")
        if s == num_stages - 1:
            parts.update({"norm", "lm_head"})
            if _uses_mtp(config):
                parts.update({"embed_tokens", *(f"mtp.{k}" for k in range(config.num_nextn_predict_layers))})
    return parts


def stage_of_parameter(name: str, config: ModelConfig, num_stages: int) -> int:
    """The stage that owns parameter ``name`` (the embedding: stage 0, even when the last
    stage holds a tied copy for MTP): whose rank counts it in norms and writes it."""
    bounds = split_layers(config.num_hidden_layers, num_stages)
    if name.startswith("layers."):
        layer = int(name.split(".")[1])
        return next(s for s, (a, b) in enumerate(bounds) if a <= layer < b)
    return 0 if name.startswith("embed_tokens.") else num_stages - 1


def tied_parameter_names(config: ModelConfig, num_stages: int) -> list[str]:
    """Parameters held by two different stages (the embedding, when MTP runs on the last)."""
    return ["embed_tokens.weight"] if num_stages > 1 and _uses_mtp(config) else []


def _uses_mtp(config: ModelConfig) -> bool:
    return config.mtp_loss_weight > 0 and config.num_nextn_predict_layers > 0


def stage_kwargs(input_ids: torch.Tensor, labels: torch.Tensor | None, doc_ids: torch.Tensor | None,
                 num_microbatches: int) -> list[dict[str, torch.Tensor | None]]:
    """Every stage's keyword arguments per micro-batch (the executor's ``micro_kwargs``),
    split along the batch as the executor splits its inputs."""
    def split(t: torch.Tensor | None) -> list[torch.Tensor | None]:
        return list(t.tensor_split(num_microbatches)) if t is not None else [None] * num_microbatches

    return [{"input_ids": ids, "labels": lab, "doc_ids": doc}
            for ids, lab, doc in zip(split(input_ids), split(labels), split(doc_ids))]


def build_model(config: ModelConfig, parts: Collection[str] | None = None) -> DeepSeekV3:
    """The whole model, or only `parts` (names from `model_parts(config)`): the others are
    `AbsentPart`s, so a pipeline rank holds just its stages under the same parameter names.
    A part left out is still constructed and initialised on the side, one part at a time,
    and dropped: torch's generator then makes exactly the draws a whole build makes, so a
    rank's stage equals the same stage of the whole model while memory never holds more
    than this rank's parts plus one other."""
    if parts is None:
        return DeepSeekV3(config)
    known = model_parts(config)
    unknown = set(parts) - set(known)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; parts are {known}")

    def build_part(name: str, build: Callable[[], nn.Module]) -> nn.Module:
        module = build()  # its default initialisation draws happen either way
        if name in parts:
            return module
        return AbsentPart(name, [m.weight.shape for m in module.modules() if drawn_at_init(m)])

    return DeepSeekV3(config, build_part=build_part)


class AbsentPart(nn.Module):
    """Where a partially built model lacks a part: no parameters, and a clear error if used."""

    def __init__(self, name: str, drawn_shapes: list[torch.Size]):
        super().__init__()
        self.part = name
        self.drawn_shapes = drawn_shapes
        """Shapes of the weights the part's initialisation draws, in order."""

    def replay_init_draws(self, std: float) -> None:
        """The draws the part's weights would have taken, in order (DeepSeekV3._init_weights)."""
        for shape in self.drawn_shapes:
            torch.empty(shape).normal_(mean=0.0, std=std)

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"model part {self.part!r} was not built on this process (build_model(config, parts))")

    def extra_repr(self) -> str:
        return f"absent {self.part!r}"
