"""Deferred weight gradients: what lets a zero-bubble/DualPipe ``W`` op run only weight GEMMs.

A Linear layer's backward is two GEMMs: dgrad ``dx = dy W``, which the previous pipeline
stage waits for, and wgrad ``dW = dyᵀ x``, which nothing needs before the optimizer
step. A split backward (``b``) runs one autograd pass inside
:func:`collect_weight_grads`; every layer that honours it (:class:`DeferrableLinear`
here, ``dsctl.fp8.Fp8Linear``) then computes only dgrad and queues a closure for its
wgrad (and bias gradient) instead of returning it to autograd. The later ``W`` op calls
the queued closures, which add the gradients to ``weight.grad`` / ``bias.grad``: b + W
run each GEMM of a full backward exactly once. Outside the context these layers are
ordinary Linears: autograd gets and accumulates every gradient as usual.

Parameters of other modules (norms, embeddings, router gates) get their gradients during
the b pass: they are cheap and not GEMMs. Queued gradients bypass autograd, so gradient
hooks on those parameters do not see them, and ``torch.autograd.grad`` must not run
inside the context (the closures write ``.grad``, which it never does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

WeightGradFn = Callable[[], None]
"""A queued weight-gradient computation; calling it accumulates into the parameters' ``.grad``."""

# A plain global, not thread-local: autograd runs CUDA backward on its own device
# threads, and the layers' backward must see the flag the calling thread set.
_queue: Optional[list[WeightGradFn]] = None


@contextlib.contextmanager
def collect_weight_grads() -> Iterator[list[WeightGradFn]]:
    """Within the block, deferring layers queue their weight gradients in the yielded list."""
    global _queue
    if _queue is not None:
        raise RuntimeError("collect_weight_grads() is already active: one split backward at a time")
    _queue = []
    try:
        yield _queue
    finally:
        _queue = None


def weight_grads(params: tuple[Optional[torch.Tensor], ...],
                 compute: Callable[[], tuple[Optional[torch.Tensor], ...]]) -> tuple[Optional[torch.Tensor], ...]:
    """For a layer's backward: the gradients of ``params`` to return to autograd.

    ``compute()`` returns one gradient (or None) per parameter. Normally it runs now and
    its result is returned; while :func:`collect_weight_grads` is active it is queued
    instead, to add its gradients to ``params``' ``.grad`` when called, and Nones are
    returned. ``compute`` must hold on to what it needs (dy, the saved input).
    """
    if _queue is None:
        return compute()

    @torch.no_grad()  # called at W, outside backward: the GEMMs must not record a graph
    def accumulate() -> None:
        for param, grad in zip(params, compute()):
            if grad is not None:
                param.grad = grad if param.grad is None else param.grad.add_(grad)

    _queue.append(accumulate)
    return (None,) * len(params)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def _cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    # Autocast's rule: floating tensors other than float64 take the autocast dtype.
    if t is None or dtype is None or t.dtype == torch.float64:
        return t
    return t.to(dtype)


class _LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b with wgrad deferrable; x is (M, K), W is (N, K).

    Operands are cast to ``dtype`` here (as autocast would) so that the Function holds
    the Parameters themselves and a queued gradient can reach their ``.grad``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dtype: Optional[torch.dtype]):
        x_c, w_c = _cast(x, dtype), _cast(weight, dtype)
        ctx.save_for_backward(x_c, w_c)
        ctx.params = (weight, bias)
        ctx.x_dtype = x.dtype
        return F.linear(x_c, w_c, _cast(bias, dtype))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        weight, bias = ctx.params
        dx = dy.mm(w).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        need_dw = ctx.needs_input_grad[1]
        need_db = bias is not None and ctx.needs_input_grad[2]

        def compute() -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
            dw = dy.t().mm(x).to(weight.dtype) if need_dw else None
            db = dy.sum(0).to(bias.dtype) if need_db else None
            return dw, db

        dw, db = weight_grads((weight, bias), compute)
        return dx, dw, db, None


class DeferrableLinear(nn.Linear):
    """``nn.Linear`` whose weight gradient waits for the ``W`` op inside :func:`collect_weight_grads`.

    Same parameters and state-dict keys as ``nn.Linear``, and the same results: the
    forward is ``F.linear``, the backward the GEMMs autograd runs for it (bit-equal on
    CPU), honouring autocast. Build one with :func:`make_weight_grads_deferrable`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        dtype = _autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):  # the Function casts, once
            y = _LinearFunction.apply(x.reshape(-1, self.in_features), self.weight, self.bias, dtype)
        return y.view(*x.shape[:-1], self.out_features)


def make_weight_grads_deferrable(module: nn.Module) -> int:
    """Turn, in place, every exact ``nn.Linear`` of ``module`` (itself included) into a
    :class:`DeferrableLinear`; returns how many. Idempotent.

    Only the class changes: the module object, its Parameters and hooks stay, so other
    containers that hold it (a pipeline stage and its model) and optimizers see the same
    thing. Subclasses (``Fp8Linear``, which defers its FP8 wgrad itself) are left alone.
    """
    linears = [m for m in module.modules() if type(m) is nn.Linear]
    for linear in linears:
        linear.__class__ = DeferrableLinear
    return len(linears)
