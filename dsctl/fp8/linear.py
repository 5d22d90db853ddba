"""``Fp8Linear``: an ``nn.Linear`` whose three GEMMs run in fine-grained FP8, and ``convert_to_fp8``.

A Linear layer does three GEMMs per training step, and all three run through the
block-scaled FP8 GEMM here, as in DeepSeek-V3's mixed-precision framework:

* Fprop  ``y  = x @ W^T``   reduces over in_features K: x in 1×128 tiles along K,
  W in 128×128 blocks.
* Dgrad  ``dx = dy @ W``    reduces over out_features N: dy in 1×128 tiles along N,
  and the *same* quantized W, transposed. A 128×128 block is still a 128×128 block
  after transposition, so the weight is quantized once per step and reused; a
  1×128 weight tiling would have to be redone along the other axis.
* Wgrad  ``dW = dy^T @ x``  reduces over tokens M: both dy and x are quantized in
  tiles that run along the token dimension (128×1 tiles of the (M, ·) matrices).
  Scales must be constant along the dimension a GEMM block reduces over, or they
  could not be pulled out of the 128-long dot product; for wgrad that dimension is
  the tokens, so the forward's 1×128 (per-token) tiles cannot be reused here.

Only the GEMM operands are FP8. The master weight, its gradient (returned in the
weight's own dtype), the bias and its gradient, and the optimizer state stay in the
higher precision: the Function quantizes a fresh copy of the weight on every call,
and ``weight``/``bias`` are ordinary ``nn.Linear`` parameters, so state dicts and
optimizer state look exactly as they would without FP8.

The input x is saved for backward as the forward quantized it, FP8 in 1×128 tiles with
their FP32 scales (1 + 4/128 bytes per element instead of 2 in BF16 or 4 in FP32), as
DeepSeek-V3 caches Linear inputs; wgrad dequantizes it and re-tiles it along the tokens
(128×1), so its x operand is rounded twice, the price of that memory.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from dsctl.fp8 import ops
from dsctl.fp8.reference import BLOCK
from dsctl.parallel.weight_grad import DeferrableLinear, weight_grads

DEFAULT_SKIP = ("lm_head", "head", "gate", "router", "*embed*", "*norm*")
"""Linear modules that stay in high precision, matched (fnmatch) against a module's
full dotted name and against its last name component. DeepSeek-V3 keeps the output
head (logit errors hit the loss directly), the MoE router gate (a small GEMM whose
scores decide discrete expert choices, so a rounding flip moves whole tokens), the
embedding and the norms in BF16/FP32. Embeddings and norms are not ``nn.Linear``
and are never converted anyway; the patterns also guard Linear-shaped modules that
a model gives those names. ``gate`` matches only a module named exactly ``gate``,
so the experts' ``gate_proj`` are still converted. Attention's softmax(QKᵀ)V is not
a Linear at all and stays in the model's precision."""


class _Fp8LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b with FP8 fprop, dgrad and wgrad GEMMs; x is (M, K), W is (N, K)."""

    @staticmethod
    def forward(ctx, x, weight, bias, block: int, out_dtype: torch.dtype):
        w_fp8, w_s = ops.weight_quant(weight, block)  # 128×128 blocks, reused by dgrad
        x_fp8, x_s = ops.act_quant(x, block)  # 1×128 tiles along K, per token
        y = ops.fp8_gemm(x_fp8, x_s, w_fp8, w_s, out_dtype=torch.float32, block=block)
        if bias is not None:
            y += bias  # added in place to the FP32 result (a BF16 bias is promoted), never quantized
        ctx.save_for_backward(x_fp8, x_s, w_fp8, w_s)  # x as FP8 + scales: the activation memory saved
        ctx.params = (weight, bias)  # where a deferred wgrad (pipeline W op) accumulates
        ctx.block = block
        ctx.x_dtype = x.dtype
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, dy):
        x_fp8, x_s, w_fp8, w_s = ctx.saved_tensors
        block = ctx.block
        dx = None
        if ctx.needs_input_grad[0]:
            # Dgrad reduces over N: dy tiles run along N; Wᵀ's blocks are W's blocks transposed.
            # The 1-byte transpose is materialized because FP8 tensor-core MMAs (Hopper
            # wgmma) read both operands K-major, i.e. contiguous along the reduction.
            dy_fp8, dy_s = ops.act_quant(dy, block)
            w_t = w_fp8.t().contiguous()
            dx = ops.fp8_gemm(dy_fp8, dy_s, w_t, w_s.t(), out_dtype=torch.float32, block=block)
            dx = dx.to(ctx.x_dtype)
        need_dw = ctx.needs_input_grad[1]
        need_db = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
        weight_dtype, bias_dtype = ctx.weight_dtype, ctx.bias_dtype

        def compute():
            dw = db = None
            if need_dw:
                # Wgrad reduces over tokens: quantize dyᵀ (N, M) and xᵀ (K, M) along M (strided views,
                # no copy); x comes back from its cached 1×128 tiles and is re-tiled 128×1.
                dyt_fp8, dyt_s = ops.act_quant(dy.t(), block)
                xt_fp8, xt_s = ops.act_quant(ops.act_dequant(x_fp8, x_s, block).t(), block)
                dw = ops.fp8_gemm(dyt_fp8, dyt_s, xt_fp8, xt_s, out_dtype=torch.float32, block=block)
                dw = dw.to(weight_dtype)
            if need_db:
                db = dy.float().sum(0).to(bias_dtype)
            return dw, db

        # Inside a pipeline's split backward this queues compute() for the W op instead.
        dw, db = weight_grads(ctx.params, compute)
        return dx, dw, db, None, None


class Fp8Linear(nn.Linear):
    """Drop-in ``nn.Linear`` whose forward and backward GEMMs run in fine-grained FP8.

    Same constructor, same ``weight`` (out_features, in_features) and ``bias``
    parameters, same state-dict keys as ``nn.Linear``; only the arithmetic differs.
    Inputs of any leading shape (..., in_features) are accepted. Under autocast the
    output takes the autocast dtype, otherwise the input's dtype. Inside a pipeline's
    split backward (``dsctl.parallel.weight_grad.collect_weight_grads``) the wgrad GEMM
    and the bias gradient wait for the ``W`` op, with the same numerics.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 block_size: int = BLOCK) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.block_size = block_size

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = BLOCK) -> "Fp8Linear":
        """Wrap an existing Linear, sharing (not copying) its Parameter objects."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta",
                  block_size=block_size)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        autocasting = torch.is_autocast_enabled(device_type)
        out_dtype = torch.get_autocast_dtype(device_type) if autocasting else x.dtype
        x2d = x.reshape(-1, self.in_features)
        if x2d.shape[0] == 0:  # no tokens: nothing to quantize, keep shapes and autograd intact
            return nn.functional.linear(x, self.weight, self.bias).to(out_dtype)
        # The Function chooses every precision itself; autocast must not re-cast its operands.
        with torch.autocast(device_type, enabled=False):
            y = _Fp8LinearFunction.apply(x2d, self.weight, self.bias, self.block_size, out_dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}"


def _is_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


def convert_to_fp8(model: nn.Module, *, min_features: int = 1, skip: tuple[str, ...] = DEFAULT_SKIP,
                   block_size: int = BLOCK) -> int:
    """Swap, in place, every ``nn.Linear`` (or ``DeferrableLinear``) of ``model`` for an :class:`Fp8Linear`.

    A Linear is converted when both its in_features and out_features are at least
    ``min_features`` and its name matches none of ``skip`` (see :data:`DEFAULT_SKIP`
    for what is kept in high precision and why). By default every width is
    converted: as in DeepSeek's kernels, a dimension that is not a multiple of 128
    ends in a partial tile/block whose scale is taken over the elements that exist
    (see ``reference.py``), so a 64-wide MoE expert runs in FP8 like a 2048-wide
    one. Raise ``min_features`` to keep narrow layers in high precision. Parameters
    are moved over as the same objects, so an optimizer built before the call keeps
    working and ``state_dict()`` keys are unchanged. Returns the number converted.
    """
    if min_features < 1:
        raise ValueError(f"min_features must be >= 1, got {min_features}")
    targets = [
        name for name, module in model.named_modules()
        if name  # the root module cannot be replaced in place
        # Exact types: already-converted or custom Linear subclasses are left alone. A
        # DeferrableLinear is a plain Linear to convert; Fp8Linear defers its wgrad itself.
        and type(module) in (nn.Linear, DeferrableLinear)
        and min(module.in_features, module.out_features) >= min_features
        and not _is_skipped(name, skip)
    ]
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, Fp8Linear.from_linear(getattr(parent, child_name), block_size=block_size))
    return len(targets)
