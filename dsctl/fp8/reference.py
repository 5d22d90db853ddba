"""Fine-grained FP8 (E4M3) quantization and block-scaled GEMM in plain PyTorch.

This file *defines* the numerics; the Triton kernels in ``triton_kernels.py`` are
tested against it, and on machines without FP8 hardware it is the backend that
training actually runs (an emulation: the FP8 values are real E4M3 numbers, only
the arithmetic on them is done in FP32 instead of on FP8 tensor cores).

Tiling, as in DeepSeek-V3 (§3.3 of the paper):

* activations: one scale per **1×128 tile** (per token, per 128 channels of the
  reduction dimension). Activations have outliers that live in a few channels of a
  few tokens; a scale per 128 elements of one row keeps one outlier from crushing
  the resolution of every other token (per-tensor scaling) or every other channel
  group of the same token (per-row scaling).
* weights: one scale per **128×128 block**. Weights are smooth, so a coarser tile
  costs little accuracy, and a square block is symmetric under transposition: the
  very same quantized weight serves the forward GEMM (reduction over in_features)
  and the backward dgrad GEMM (reduction over out_features) without requantizing.

Partial tiles (K or N not a multiple of 128) follow one rule everywhere: **a
trailing tile is treated as zero-padded to 128**. Its scale is computed from the
elements that exist (zero padding cannot raise an absolute maximum) and padded
positions contribute nothing to a GEMM. Scale tensors therefore have
``ceil(dim / 128)`` entries along a tiled dimension.

Scales are FP32 and equal ``amax / 448`` of their tile (448 is E4M3's largest
finite value), so the largest element of every tile lands exactly on ±448 and the
tile uses the whole E4M3 range. An all-zero tile gets the scale of ``AMAX_FLOOR``
instead of 0 so dequantization never divides by zero.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
"""E4M3 with no infinities ("fn"): 4 exponent bits, 3 mantissa bits, max 448."""

FP8_MAX = 448.0
"""Largest finite E4M3 value; each tile's absolute maximum is mapped onto it."""

BLOCK = 128
"""Tile edge. 128 is also the K-interval at which partial sums are promoted to FP32."""

AMAX_FLOOR = 1e-12
"""Smallest absolute maximum used for a scale, so an all-zero tile has a usable scale."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_last(x: torch.Tensor, block: int) -> torch.Tensor:
    """Zero-pad the last dimension up to a multiple of ``block`` (the partial-tile rule)."""
    pad = ceil_div(x.shape[-1], block) * block - x.shape[-1]
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


def _quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale, clamped into E4M3 range and rounded to nearest-even by the cast.

    The clamp only matters for values that round *up* past 448 from exactly
    ``amax / scale``; it keeps every backend's saturation behaviour identical.
    """
    return torch.clamp(x / scale, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize along the last dimension in 1×``block`` tiles.

    x: (..., K) any float dtype. Returns ``(x_fp8, scales)`` with x_fp8 (..., K) in
    E4M3 and scales (..., ceil(K / block)) in FP32, such that
    ``x ≈ x_fp8 * scales`` repeated ``block`` times along the last dimension.
    """
    if x.shape[-1] == 0:
        raise ValueError("act_quant needs a non-empty last dimension to tile")
    k = x.shape[-1]
    tiles = _pad_last(x.float(), block).unflatten(-1, (-1, block))  # (..., Kb, block)
    amax = tiles.abs().amax(dim=-1).clamp_min(AMAX_FLOOR)  # (..., Kb)
    scales = amax / FP8_MAX
    q = _quantize(tiles, scales.unsqueeze(-1)).flatten(-2)[..., :k]
    return q, scales


def weight_quant(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight (N, K) in ``block``×``block`` tiles.

    Returns ``(w_fp8, scales)`` with scales (ceil(N / block), ceil(K / block)) in FP32.
    """
    if w.dim() != 2:
        raise ValueError(f"weight_quant expects a 2-D weight, got shape {tuple(w.shape)}")
    n, k = w.shape
    nb, kb = ceil_div(n, block), ceil_div(k, block)
    padded = torch.zeros(nb * block, kb * block, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w.float()
    tiles = padded.view(nb, block, kb, block)  # (Nb, block, Kb, block)
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR)  # (Nb, Kb)
    scales = amax / FP8_MAX
    q = _quantize(tiles, scales[:, None, :, None]).view(nb * block, kb * block)[:n, :k]
    return q.contiguous(), scales


def expand_scales(scales: torch.Tensor, rows: int, cols: int, block: int = BLOCK) -> torch.Tensor:
    """Broadcast per-tile scales to one scale per element of a (rows, cols) matrix.

    ``scales`` is either per-row (rows, Cb) — 1×block tiles — or per-block
    (ceil(rows / block), Cb) — block×block tiles; the two shapes differ whenever
    rows > 1, and coincide (meaning the same thing) when rows == 1.
    """
    row_repeat = 1 if scales.shape[0] == rows else block
    full = scales.repeat_interleave(row_repeat, dim=0).repeat_interleave(block, dim=1)
    return full[:rows, :cols]


def act_dequant(x_fp8: torch.Tensor, scales: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Inverse of :func:`act_quant` (up to rounding): FP32 tensor of x_fp8's shape."""
    k = x_fp8.shape[-1]
    full = scales.repeat_interleave(block, dim=-1)[..., :k]
    return x_fp8.float() * full


def weight_dequant(w_fp8: torch.Tensor, scales: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Inverse of :func:`weight_quant` (up to rounding): FP32 (N, K)."""
    n, k = w_fp8.shape
    return w_fp8.float() * expand_scales(scales, n, k, block)


def check_gemm_operands(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                        block: int = BLOCK) -> tuple[int, int, int]:
    """Validate shapes for ``a @ b.T`` and return (M, N, K); raises a ValueError that names the culprit."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"fp8_gemm computes a @ b.T over a shared last dim; got a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[0]
    kb = ceil_div(k, block)
    if tuple(a_s.shape) != (m, kb):
        raise ValueError(f"a_scales must be per 1x{block} tile, shape {(m, kb)}; got {tuple(a_s.shape)}")
    if b_s.shape[1:] != (kb,) or b_s.shape[0] not in (n, ceil_div(n, block)):
        raise ValueError(f"b_scales must be ({n} or {ceil_div(n, block)}, {kb}) for 1x{block} or "
                         f"{block}x{block} tiles; got {tuple(b_s.shape)}")
    return m, n, k


def fp8_gemm(a_fp8: torch.Tensor, a_scales: torch.Tensor, b_fp8: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype = torch.float32, block: int = BLOCK) -> torch.Tensor:
    """Block-scaled ``a @ b.T`` with FP32 accumulation: (M, K) x (N, K) -> (M, N).

    a is tiled 1×block along K (``a_scales`` (M, Kb)). b is tiled either
    block×block (``b_scales`` (ceil(N/block), Kb), a weight) or 1×block along K
    (``b_scales`` (N, Kb), an activation — used by wgrad, where both operands are
    activations/gradients tiled along the token dimension).

    Numerics (what the Triton kernel must reproduce): for each K-block, multiply
    the FP8 values (exact in FP32: 4-bit × 4-bit significands), sum the 128
    products in FP32, multiply that partial sum by the a-scale and then the
    b-scale of the block, and add it to an FP32 accumulator, blocks in order.
    Scaling per K-block rather than once at the end is what makes fine-grained
    tiles possible at all: every block has its own pair of scales. Keeping the
    128-wide partial sum in FP32 mirrors DeepSeek-V3's fix for H800 tensor cores,
    whose FP8 accumulator keeps only ~14 bits: partial sums are promoted to FP32
    registers every 128 elements of K so rounding error cannot build up over long K.
    """
    m, n, k = check_gemm_operands(a_fp8, a_scales, b_fp8, b_scales, block)
    b_rows_per_scale = 1 if b_scales.shape[0] == n else block
    b_row_scale_index = torch.arange(n, device=b_fp8.device) // b_rows_per_scale
    a, b = a_fp8.float(), b_fp8.float()  # exact: every E4M3 value is an FP32 value
    acc = torch.zeros(m, n, dtype=torch.float32, device=a_fp8.device)
    for kb in range(ceil_div(k, block)):
        cols = slice(kb * block, min((kb + 1) * block, k))
        partial = a[:, cols] @ b[:, cols].T  # (M, N): FP32 sum of exact products
        acc += partial * a_scales[:, kb, None] * b_scales[b_row_scale_index, kb][None, :]
    return acc.to(out_dtype)


def quant_error_bound(x: torch.Tensor, scales_per_element: torch.Tensor) -> torch.Tensor:
    """Worst-case absolute round-off of each element of ``x`` under E4M3 with the given scales.

    E4M3 keeps 3 mantissa bits, so a value in the normal range is off by at most
    half an ulp, 2^-4 of itself; below the smallest normal (2^-6, in the scaled
    domain) values sit on a fixed grid of spacing 2^-9 and are off by at most
    2^-10. In the original domain: ``max(|x| * 2^-4, 2^-10 * scale)``.
    """
    return torch.maximum(x.float().abs() * 2.0**-4, scales_per_element * 2.0**-10)
