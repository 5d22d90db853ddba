"""Numerics of the torch FP8 reference: tiling, error bounds, the block-scaled GEMM."""

import pytest
import torch

from dsctl.fp8 import reference as ref
from dsctl.fp8.reference import BLOCK, FP8_MAX


def _heavy_tailed(*shape, seed=0):
    """Gaussian values with per-column magnitudes spanning 5 decades, like real activations."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * torch.logspace(-3, 2, shape[-1])


def test_act_quant_shapes_and_dtypes_with_partial_tile():
    x = _heavy_tailed(3, 5, 300)
    q, s = ref.act_quant(x)
    assert q.shape == x.shape and q.dtype == torch.float8_e4m3fn
    assert s.shape == (3, 5, 3) and s.dtype == torch.float32  # ceil(300 / 128) = 3 tiles per row


def test_act_quant_dequant_error_within_e4m3_half_ulp_per_element():
    x = _heavy_tailed(16, 300)
    q, s = ref.act_quant(x)
    err = (ref.act_dequant(q, s) - x).abs()
    bound = ref.quant_error_bound(x, s.repeat_interleave(BLOCK, dim=-1)[..., :300])
    # 1 + 2^-20 absorbs the FP32 rounding of x / scale and of the dequant multiply.
    assert (err <= bound * (1 + 2**-20)).all()
    assert err.max() > 0  # the check is not vacuous: E4M3 really rounds


def test_each_tile_max_lands_on_e4m3_max():
    x = _heavy_tailed(8, 256)
    q, _ = ref.act_quant(x)
    tile_max = q.float().abs().view(8, 2, BLOCK).amax(-1)
    assert torch.equal(tile_max, torch.full_like(tile_max, FP8_MAX))


def test_zero_tile_quantizes_to_zero_with_finite_scale():
    x = torch.zeros(2, 256)
    x[1, 130] = 3.0
    q, s = ref.act_quant(x)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert torch.equal(ref.act_dequant(q, s), x)


def test_activation_outlier_changes_only_its_own_tile_scale():
    x = _heavy_tailed(4, 512, seed=1)
    clean_q, clean_s = ref.act_quant(x)
    spiked = x.clone()
    spiked[0, 5] = 1e4  # one outlier in tile (row 0, channels 0..127)
    q, s = ref.act_quant(spiked)
    others = torch.ones_like(s, dtype=torch.bool)
    others[0, 0] = False
    assert s[0, 0] > clean_s[0, 0]
    assert torch.equal(s[others], clean_s[others])
    keep = others.repeat_interleave(BLOCK, dim=-1)
    assert torch.equal(q.view(torch.uint8)[keep], clean_q.view(torch.uint8)[keep])


def test_fine_grained_scaling_beats_per_tensor_scaling_next_to_an_outlier():
    # Typical activations are O(0.1); a 1e4 outlier (a ratio of 1e5) pushes them, under
    # a single tensor-wide scale, into E4M3's subnormal range where only a few
    # grid points remain.
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(2)) * 0.1
    x[0, 5] = 1e4
    q, s = ref.act_quant(x)
    tiled_err = (ref.act_dequant(q, s) - x)[1:].norm() / x[1:].norm()
    tensor_scale = x.abs().max() / FP8_MAX  # what one scale for the whole tensor would do
    per_tensor = (x / tensor_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * tensor_scale
    tensor_err = (per_tensor - x)[1:].norm() / x[1:].norm()
    assert tiled_err < 0.05 and tensor_err > 3 * tiled_err  # measured: 0.026 vs 0.124


def test_weight_outlier_changes_only_its_own_block_scale():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(256, 384, generator=g) * 0.02
    clean_q, clean_s = ref.weight_quant(w)
    w[200, 300] = 5.0  # block (1, 2)
    q, s = ref.weight_quant(w)
    assert s.shape == (2, 3)
    changed = (s != clean_s).nonzero().tolist()
    assert changed == [[1, 2]]
    assert torch.equal(q[:128].view(torch.uint8), clean_q[:128].view(torch.uint8))


def test_weight_quant_partial_blocks_and_error_bound():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(200, 130, generator=g) * 0.05
    q, s = ref.weight_quant(w)
    assert q.shape == w.shape and s.shape == (2, 2)
    full_scales = ref.expand_scales(s, 200, 130)
    err = (ref.weight_dequant(q, s) - w).abs()
    assert (err <= ref.quant_error_bound(w, full_scales) * (1 + 2**-20)).all()


def _exact_block_gemm(a, a_s, b, b_s):
    """float64 product of the dequantized operands: exact up to one final rounding."""
    m, k = a.shape
    n = b.shape[0]
    a_full = a.double() * ref.expand_scales(a_s, m, k).double()
    b_full = b.double() * ref.expand_scales(b_s, n, k).double()
    return a_full @ b_full.T, a_full.abs() @ b_full.abs().T


@pytest.mark.parametrize("m,n,k", [(64, 256, 256), (37, 130, 200), (1, 1, 5)])
def test_reference_gemm_equals_exact_dequantized_product_up_to_fp32_rounding(m, n, k):
    a_q, a_s = ref.act_quant(_heavy_tailed(m, k, seed=5))
    b_q, b_s = ref.weight_quant(torch.randn(n, k, generator=torch.Generator().manual_seed(6)))
    out = ref.fp8_gemm(a_q, a_s, b_q, b_s)
    exact, magnitude = _exact_block_gemm(a_q, a_s, b_q, b_s)
    # Standard FP32 summation bound: 128 adds inside a block, one per block, 2 scale multiplies.
    kb = ref.ceil_div(k, BLOCK)
    bound = (BLOCK + kb + 3) * 2.0**-24 * magnitude
    assert out.shape == (m, n)
    assert ((out.double() - exact).abs() <= bound).all()


def test_gemm_accepts_per_row_b_scales_for_wgrad_layout():
    a_q, a_s = ref.act_quant(_heavy_tailed(48, 256, seed=7))
    b_q, b_s = ref.act_quant(_heavy_tailed(96, 256, seed=8))  # b in 1x128 tiles: scales (96, 2)
    out = ref.fp8_gemm(a_q, a_s, b_q, b_s)
    exact, magnitude = _exact_block_gemm(a_q, a_s, b_q, b_s)
    assert ((out.double() - exact).abs() <= (BLOCK + 5) * 2.0**-24 * magnitude).all()


def test_gemm_relative_error_vs_fp32_matmul_is_small():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(128, 512, generator=g)
    w = torch.randn(256, 512, generator=g) * 0.02
    a_q, a_s = ref.act_quant(x)
    b_q, b_s = ref.weight_quant(w)
    out = ref.fp8_gemm(a_q, a_s, b_q, b_s)
    rel = (out - x @ w.T).norm() / (x @ w.T).norm()
    assert rel < 0.05  # E4M3 keeps 3 mantissa bits: ~2-4% is its nature, not a bug


def test_gemm_output_dtype_follows_request():
    a_q, a_s = ref.act_quant(torch.randn(4, 128))
    b_q, b_s = ref.weight_quant(torch.randn(8, 128))
    assert ref.fp8_gemm(a_q, a_s, b_q, b_s, out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_gemm_rejects_mismatched_operands_with_named_shapes():
    a_q, a_s = ref.act_quant(torch.randn(4, 256))
    b_q, b_s = ref.weight_quant(torch.randn(8, 128))
    with pytest.raises(ValueError, match="shared last dim"):
        ref.fp8_gemm(a_q, a_s, b_q, b_s)
    b_q, b_s = ref.weight_quant(torch.randn(300, 256))
    with pytest.raises(ValueError, match="b_scales"):
        ref.fp8_gemm(a_q, a_s, b_q, b_s[:1])
