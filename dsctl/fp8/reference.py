"""Fine-grained FP8 (E4M3) quantization and block-scaled GEMM in plain PyTorch.

This file *defines* the numerics; the Triton kernels in ``triton_kernels.py`` are
tested against it, and on machines without FP8 hardware it is the backend that
training actually runs (an emulation: the FP8 values are real E4M3 numbers, only
the arithmetic on them is done in FP32 instead of on FP8 tensor cores). Two GEMMs
compute the same block-scaled sum: :func:`fp8_gemm` dequantizes both operands and
runs one FP32 matmul (the fast path that training uses), :func:`fp8_gemm_blockwise`
accumulates K-block by K-block exactly as the Triton kernel does (slow; for tests).

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


def _tile_views(t: torch.Tensor, dim: int, block: int) -> list[torch.Tensor]:
    """Views (no copies) of ``t`` cut along ``dim`` into its whole ``block``-long tiles and
    the trailing partial tile, if any: (..., tiles, elements, ...) with the tile index
    at ``dim`` and a tile's elements at ``dim + 1``. At most two views, so the callers'
    loops run over "whole tiles, partial tile", never over individual tiles."""
    size = t.shape[dim]
    whole = size - size % block
    views = []
    if whole:
        views.append(t.narrow(dim, 0, whole).unflatten(dim, (whole // block, block)))
    if whole < size:
        views.append(t.narrow(dim, whole, size - whole).unsqueeze(dim))
    return views


def _scale_views(scales: torch.Tensor, dim: int, size: int, block: int) -> list[torch.Tensor]:
    """The per-tile ``scales`` matching :func:`_tile_views` of a ``size``-long ``dim``,
    shaped to broadcast over each tile's elements."""
    whole = size // block
    parts = [scales.narrow(dim, 0, whole)] if whole else []
    if whole * block < size:
        parts.append(scales.narrow(dim, whole, 1))
    return [p.unsqueeze(dim + 1) for p in parts]


def _tile_amax(t: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    """FP32 absolute maximum of every ``block``-long tile of 2-D ``t`` along ``dim``.

    Tiles run along ``dim``, so the result has ``ceil(size / block)`` entries there;
    a partial tile's maximum is over the elements that exist. ``max(amax, -amin)``
    reads ``t`` twice but never materializes ``|t|``, a full-size temporary.
    """
    parts = [torch.maximum(v.amax(dim + 1), v.amin(dim + 1).neg_()) for v in _tile_views(t, dim, block)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim)).float()


def _scales_from_amax(amax: torch.Tensor) -> torch.Tensor:
    return amax.clamp_min(AMAX_FLOOR) / FP8_MAX


def _quantize(t: torch.Tensor, scales: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    """E4M3 tensor of ``t``'s shape: ``clamp(t / scale, -448, 448)`` of every tile, cast.

    ``scales`` has one entry per ``block``-long tile along ``dim`` (any size along the
    other dimension that broadcasts). The quotient is computed in FP32 (``t`` may be
    BF16; the FP32 scales promote it) into one buffer, clamped in place, and cast to
    E4M3 (round to nearest even) in one pass. The clamp is belt and braces: with
    ``|x| <= amax`` and ``scale = fl(amax / 448)``, ``|x / scale|`` exceeds 448 by at
    most 2 FP32 ulps, which the cast would round to 448 anyway; it keeps every
    backend's saturation behaviour identical by construction.
    """
    quotient = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    size = t.shape[dim]
    for src, dst, s in zip(_tile_views(t, dim, block), _tile_views(quotient, dim, block),
                           _scale_views(scales, dim, size, block)):
        torch.div(src, s, out=dst)
    return quotient.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize along the last dimension in 1×``block`` tiles.

    x: (..., K) any float dtype. Returns ``(x_fp8, scales)`` with x_fp8 (..., K) in
    E4M3 and scales (..., ceil(K / block)) in FP32, such that
    ``x ≈ x_fp8 * scales`` repeated ``block`` times along the last dimension.

    A 2-D column-major input (a transposed view, as wgrad passes ``dy.t()``) is
    quantized down the columns of its row-major original, so every pass reads memory
    in order; x_fp8 and scales then come back as transposed views too.
    """
    if x.shape[-1] == 0:
        raise ValueError("act_quant needs a non-empty last dimension to tile")
    if x.dim() == 2 and x.stride(0) == 1 and x.stride(1) != 1:
        xt = x.t()
        scales = _scales_from_amax(_tile_amax(xt, 0, block))
        return _quantize(xt, scales, 0, block).t(), scales.t()
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    scales = _scales_from_amax(_tile_amax(x2, 1, block))
    q = _quantize(x2, scales, 1, block)
    return q.view(x.shape), scales.view(*x.shape[:-1], scales.shape[-1])


def weight_quant(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight (N, K) in ``block``×``block`` tiles.

    Returns ``(w_fp8, scales)`` with scales (ceil(N / block), ceil(K / block)) in FP32.
    A block's absolute maximum is the maximum, over its (up to) 128 rows, of each
    row's 1×block tile maximum: exact, and no padded copy of the weight is made.
    """
    if w.dim() != 2:
        raise ValueError(f"weight_quant expects a 2-D weight, got shape {tuple(w.shape)}")
    n = w.shape[0]
    scales = _scales_from_amax(_tile_amax(_tile_amax(w, 1, block), 0, block))  # (Nb, Kb)
    row_scales = scales.repeat_interleave(block, dim=0)[:n]  # (N, Kb): each row's block scales
    return _quantize(w, row_scales, 1, block), scales


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
    """Inverse of :func:`act_quant` (up to rounding): FP32 tensor of x_fp8's shape.

    Through :func:`_dequantize`'s vectorized FP16 route, bit-identical to
    ``x_fp8.float() * scale``: wgrad reads every Linear's cached input back this way each
    step, and torch's own FP8 -> FP32 cast runs one element at a time on CPU.
    """
    if x_fp8.dim() == 2:
        return _dequantize(x_fp8, scales, block)
    k = x_fp8.shape[-1]
    flat = _dequantize(x_fp8.reshape(-1, k), scales.reshape(-1, scales.shape[-1]), block)
    return flat.view(x_fp8.shape)


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


def _row_scales(scales: torch.Tensor, rows: int, block: int) -> torch.Tensor:
    """Per-row (rows, Cb) scales from either per-row or block×block (ceil(rows / block), Cb) ones."""
    return scales if scales.shape[0] == rows else scales.repeat_interleave(block, dim=0)[:rows]


def _dequantize(q: torch.Tensor, row_scales: torch.Tensor, block: int) -> torch.Tensor:
    """FP32 ``q * scale`` of a 2-D E4M3 matrix tiled 1×``block`` along its columns.

    Bit-identical to ``q.float() * expand_scales(...)``, but about twice as fast on
    CPU, where torch converts FP8 to FP32 one element at a time: the E4M3 bytes are
    turned into FP16 bit patterns with three vectorized int16 passes and converted
    by the hardware FP16 path. Placing E4M3's exponent and mantissa bits at the top
    of an FP16's (whose exponent bias is 8 larger) gives exactly ``value * 2^-8``
    for normals and subnormals alike, so each tile's scale is multiplied by 2^8
    (exact: a power of two, and FP32's max / 448 * 256 cannot overflow), and the one
    rounding left is that of the product, the same as ``q.float() * scale``'s.
    The NaN bytes (0x7F, 0xFF) would read as ±480, but quantization never emits them
    except into a tile whose scale is NaN as well, where every product is NaN anyway.
    The result has ``q``'s layout: a transposed view comes back as a transposed view.
    """
    if q.stride(-1) != 1 and q.stride(0) == 1:  # column-major: work on the row-major original
        return _dequantize_along(q.t(), row_scales.t(), 0, block).t()
    return _dequantize_along(q, row_scales, 1, block)


def _dequantize_along(q: torch.Tensor, scales: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    bits = q.view(torch.int8).to(torch.int16)  # sign-extended: 0bS...S Seeeemmm
    bits <<= 7  # 0bS Seeeemmm 0000000: sign, a stray copy of it, exponent, mantissa
    bits &= ~0x4000  # clear the stray copy: the FP16 pattern of value * 2^-8
    out = bits.view(torch.float16).float()
    size = q.shape[dim]
    for tiles, s in zip(_tile_views(out, dim, block), _scale_views(scales, dim, size, block)):
        tiles.mul_(s * 2.0**8)
    return out


def fp8_gemm(a_fp8: torch.Tensor, a_scales: torch.Tensor, b_fp8: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype = torch.float32, block: int = BLOCK) -> torch.Tensor:
    """Block-scaled ``a @ b.T`` with FP32 accumulation: (M, K) x (N, K) -> (M, N).

    a is tiled 1×block along K (``a_scales`` (M, Kb)). b is tiled either
    block×block (``b_scales`` (ceil(N/block), Kb), a weight) or 1×block along K
    (``b_scales`` (N, Kb), an activation — used by wgrad, where both operands are
    activations/gradients tiled along the token dimension).

    Each operand is dequantized (E4M3 -> FP32, times its tile's scale) and the two
    are multiplied in ONE FP32 matmul. Mathematically that is the block-scaled sum
    :func:`fp8_gemm_blockwise` spells out, ``sum_kb a_s[kb] * b_s[kb] * (a_kb @ b_kb.T)``:
    the scales are constant within a K-block, so they distribute over its products.
    Only the FP32 rounding differs — a scale is applied per element before the
    products instead of per 128-long partial sum after them, and the adds run in the
    BLAS's order over all of K — so the two agree to FP32 round-off (about K * 2^-24
    relative to ``|a| @ |b|.T`` in the worst case), not bit for bit. This is the
    backend that training runs on machines without FP8 GPUs, at the cost of one FP32
    matmul plus elementwise passes instead of one small matmul per K-block.
    """
    m, n, k = check_gemm_operands(a_fp8, a_scales, b_fp8, b_scales, block)
    a = _dequantize(a_fp8, a_scales, block)
    b = _dequantize(b_fp8, _row_scales(b_scales, n, block), block)
    return (a @ b.T).to(out_dtype)


def fp8_gemm_blockwise(a_fp8: torch.Tensor, a_scales: torch.Tensor, b_fp8: torch.Tensor, b_scales: torch.Tensor,
                       out_dtype: torch.dtype = torch.float32, block: int = BLOCK) -> torch.Tensor:
    """Slow, per-K-block version of :func:`fp8_gemm`: exactly the Triton kernel's arithmetic.

    For each K-block, multiply the FP8 values (exact in FP32: 4-bit × 4-bit
    significands), sum the 128 products in FP32, multiply that partial sum by the
    a-scale and then the b-scale of the block, and add it to an FP32 accumulator,
    blocks in order. Scaling per K-block rather than once at the end is what makes
    fine-grained tiles possible at all: every block has its own pair of scales.
    Keeping the 128-wide partial sum in FP32 mirrors DeepSeek-V3's fix for H800
    tensor cores, whose FP8 accumulator keeps only ~14 bits: partial sums are
    promoted to FP32 registers every 128 elements of K so rounding error cannot
    build up over long K.

    It loops over K-blocks in Python, one small matmul each, so it is for checking
    the Triton kernels (``tests/test_fp8_triton.py``), not for training.
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
