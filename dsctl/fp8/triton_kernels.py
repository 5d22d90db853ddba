"""Triton kernels for fine-grained FP8: activation quant, weight quant, block-scaled GEMM.

They compute exactly what ``reference.py`` defines (see there for the tiling and the
partial-tile rule); ``ops.py`` decides when they run. On CPU they run only under the
Triton interpreter (``TRITON_INTERPRET=1``, set before this module is imported,
because ``@triton.jit`` picks compiled vs interpreted mode when it decorates).

Rounding to E4M3. On FP8 GPUs the ``.to(tl.float8e4nv)`` cast is a hardware
round-to-nearest-even. The Triton interpreter instead converts FP32 to FP8 by bit
manipulation that rounds ties away from zero, can carry a mantissa overflow into
the wrong exponent bit and truncates subnormals, so a plain cast is *not* faithful
there (measured with triton 3.9: 1.0625 -> 1.125 instead of 1.0, 1.9375 -> 1.0
instead of 2.0, 1.5 * 2^-9 -> 2^-9 instead of 2^-8). ``_round_to_e4m3`` therefore
rounds the FP32 value onto the E4M3 grid first, with IEEE FP32 arithmetic only
(identical on GPU, in NumPy and in torch); the cast that follows receives an exactly
representable value and is exact on every backend. The GEMM's BF16 output gets the
same treatment, because the interpreter's FP32->BF16 cast truncates. On a GPU the
extra ALU ops per element are free next to the memory traffic of the kernel, and
even if a compiler folded them away, the hardware cast rounds the same way.

Division. ``tl.div_rn`` (IEEE round-to-nearest) computes ``x / scale`` and
``amax / 448``, because Triton's plain ``/`` on FP32 may lower to an approximate
GPU division, and torch divides exactly; a 1-ulp difference in a scale would break
bit-equality with the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dsctl.fp8.reference import AMAX_FLOOR, BLOCK, FP8_DTYPE, FP8_MAX, ceil_div, check_gemm_operands

# Biased FP32 exponent of 2^-6, E4M3's smallest normal: below it the E4M3 grid stops
# shrinking with the binade and stays at 2^-9 (the subnormals).
_E4M3_MIN_NORMAL_BIASED_EXP = tl.constexpr(121)
# FP32 has 23 mantissa bits and E4M3 has 3: a binade's E4M3 spacing is 2^20 FP32 ulps.
_MANTISSA_BITS_DROPPED = tl.constexpr(20)
# Jitted code may read module globals only when they are constexpr.
_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)


@triton.jit
def _round_to_e4m3(v):
    """Round FP32 ``v`` (|v| <= 448) to the nearest E4M3 value, ties to even, in FP32.

    Adding a power of two 2^20 times larger than |v|'s binade makes the FP32 sum's
    ulp equal to that binade's E4M3 spacing, so the IEEE add itself rounds |v| to the
    E4M3 grid (ties to even); subtracting the constant back is exact (Sterbenz). The
    sign bit is copied back from ``v`` so that -0 and negatives that round to zero
    stay -0, as torch's cast leaves them.
    """
    bits = v.to(tl.uint32, bitcast=True)
    biased_exp = (bits >> 23) & 0xFF
    magic_exp = tl.maximum(biased_exp, _E4M3_MIN_NORMAL_BIASED_EXP) + _MANTISSA_BITS_DROPPED
    magic = (magic_exp << 23).to(tl.float32, bitcast=True)
    mag = (tl.abs(v) + magic) - magic
    return (mag.to(tl.uint32, bitcast=True) | (bits & 0x80000000)).to(tl.float32, bitcast=True)


@triton.jit
def _round_to_bf16(v):
    """Round FP32 to the nearest BF16 value (ties to even), still in FP32.

    BF16 is FP32 with the low 16 mantissa bits dropped, so the classic integer
    rounding works: add half an ulp (plus the kept lsb, for ties to even) and mask.
    Needed because the interpreter's FP32->BF16 cast truncates where GPUs round.
    """
    bits = v.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(v != v, v, rounded.to(tl.float32, bitcast=True))


@triton.jit
def _quantize_tile(x, scale):
    """x / scale (IEEE division, as torch does) clamped to ±448, rounded onto E4M3."""
    q = tl.div_rn(x, scale)
    q = tl.minimum(tl.maximum(q, -_FP8_MAX), _FP8_MAX)
    return _round_to_e4m3(q).to(tl.float8e4nv)


@triton.jit
def _act_quant_kernel(x_ptr, y_ptr, s_ptr, M, K, stride_xm, stride_xk,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # One program: BLOCK_M rows x one 1xBLOCK_K tile per row. Strided input, so a
    # transposed view (wgrad's tiles along tokens) is quantized without a copy.
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = offs_m < M
    mask = row_ok[:, None] & (offs_k[None, :] < K)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    x = x.to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), _AMAX_FLOOR)
    scale = tl.div_rn(amax, tl.full(amax.shape, _FP8_MAX, tl.float32))
    q = _quantize_tile(x, scale[:, None])
    tl.store(y_ptr + offs_m[:, None] * K + offs_k[None, :], q, mask=mask)
    tl.store(s_ptr + offs_m * tl.cdiv(K, BLOCK_K) + pid_k, scale, mask=row_ok)


@triton.jit
def _weight_quant_kernel(w_ptr, y_ptr, s_ptr, N, K, stride_wn, stride_wk, BLOCK: tl.constexpr):
    # One program per BLOCKxBLOCK weight block, one scale for all of it.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    offs_k = pid_k * BLOCK + tl.arange(0, BLOCK)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=mask, other=0.0)
    w = w.to(tl.float32)
    amax = tl.maximum(tl.max(tl.max(tl.abs(w), axis=1), axis=0), _AMAX_FLOOR)
    scale = tl.div_rn(amax, tl.full((), _FP8_MAX, tl.float32))
    q = _quantize_tile(w, scale)
    tl.store(y_ptr + offs_n[:, None] * K + offs_k[None, :], q, mask=mask)
    tl.store(s_ptr + pid_n * tl.cdiv(K, BLOCK) + pid_k, scale)


@triton.jit
def _fp8_gemm_kernel(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, M, N, K,
                     stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                     stride_asm, stride_ask, stride_bsn, stride_bsk,
                     B_ROWS_PER_SCALE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = A @ B^T with A (M, K) tiled 1xBLOCK_K and B (N, K) tiled by B_ROWS_PER_SCALE x BLOCK_K.

    Matches the reference up to FP32 round-off: the order of the 128 additions inside
    a tensor-core dot is the hardware's, and on a GPU the scaling epilogue may be
    contracted into an FMA (one rounding fewer than the reference's mul, mul, add).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None] * stride_bk  # (BLOCK_K, BLOCK_N)
    as_ptrs = as_ptr + offs_m * stride_asm
    bs_ptrs = bs_ptr + (offs_n // B_ROWS_PER_SCALE) * stride_bsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - kb * BLOCK_K  # partial last K-block: masked lanes load 0
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        a_s = tl.load(as_ptrs + kb * stride_ask, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptrs + kb * stride_bsk, mask=n_ok, other=0.0)
        # A fresh FP32 partial per K-block, then scaled into the FP32 accumulator:
        # this is the "promotion every 128 elements" of DeepSeek-V3, and the only
        # place the per-tile scales can enter, since they change from block to block.
        # It also bounds tensor-core imprecision: on sm_90 Triton lets an FP8 dot
        # accumulate at reduced precision for its whole K (max_num_imprecise_acc
        # defaults to 2^30 there), and each dot here spans just one 128-wide block.
        partial = tl.dot(a, b, out_dtype=tl.float32)
        acc += partial * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if c_ptr.dtype.element_ty == tl.bfloat16:
        acc = _round_to_bf16(acc)  # then the cast below is exact on every backend
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _check_block(block: int) -> None:
    if block < 16 or block & (block - 1):
        raise ValueError(f"Triton FP8 kernels need a power-of-two block >= 16, got {block}")


def act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`dsctl.fp8.reference.act_quant` (same shapes, same bits)."""
    _check_block(block)
    k = x.shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, k)  # 2-D inputs keep their strides (transposed views)
    m = x2.shape[0]
    kb = ceil_div(k, block)
    y = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(m, kb, dtype=torch.float32, device=x.device)
    block_m = 32
    grid = (ceil_div(m, block_m), kb)
    _act_quant_kernel[grid](x2, y, s, m, k, x2.stride(0), x2.stride(1), BLOCK_M=block_m, BLOCK_K=block)
    return y.view(*x.shape), s.view(*x.shape[:-1], kb)


def weight_quant(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`dsctl.fp8.reference.weight_quant`."""
    _check_block(block)
    if w.dim() != 2:
        raise ValueError(f"weight_quant expects a 2-D weight, got shape {tuple(w.shape)}")
    n, k = w.shape
    y = torch.empty(n, k, dtype=FP8_DTYPE, device=w.device)
    s = torch.empty(ceil_div(n, block), ceil_div(k, block), dtype=torch.float32, device=w.device)
    _weight_quant_kernel[s.shape](w, y, s, n, k, w.stride(0), w.stride(1), BLOCK=block)
    return y, s


def _gemm_launch_config(m: int) -> dict:
    # Large-M GEMMs (training) take 128x128 output tiles; small M (short
    # sequences, tests) a 64-row tile so fewer rows are masked-out waste.
    if m >= 128:
        return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3)


def fp8_gemm(a_fp8: torch.Tensor, a_scales: torch.Tensor, b_fp8: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype = torch.float32, block: int = BLOCK) -> torch.Tensor:
    """Triton twin of :func:`dsctl.fp8.reference.fp8_gemm`; operands may be strided views."""
    _check_block(block)
    m, n, k = check_gemm_operands(a_fp8, a_scales, b_fp8, b_scales, block)
    c = torch.empty(m, n, dtype=out_dtype, device=a_fp8.device)
    cfg = _gemm_launch_config(m)
    grid = (ceil_div(m, cfg["BLOCK_M"]), ceil_div(n, cfg["BLOCK_N"]))
    _fp8_gemm_kernel[grid](
        a_fp8, b_fp8, c, a_scales, b_scales, m, n, k,
        a_fp8.stride(0), a_fp8.stride(1), b_fp8.stride(0), b_fp8.stride(1), c.stride(0), c.stride(1),
        a_scales.stride(0), a_scales.stride(1), b_scales.stride(0), b_scales.stride(1),
        B_ROWS_PER_SCALE=1 if b_scales.shape[0] == n else block, BLOCK_K=block, **cfg)
    return c
