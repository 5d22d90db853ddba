"""The Triton FP8 kernels, run on CPU by the Triton interpreter, against the torch reference.

``@triton.jit`` decides between compiling and interpreting when it decorates, i.e.
when ``dsctl.fp8.triton_kernels`` is first imported, and that import may already
have happened in this pytest process. So the kernels run in a fresh subprocess with
``TRITON_INTERPRET=1`` set before anything imports triton: this file re-executed as
a script (``--worker``) computes every comparison once and prints them as JSON; the
tests below each assert one behaviour from that report.

Expectations: quantization is bit-identical (same E4M3 bytes, same FP32 scales) —
the kernels round onto the E4M3 grid with plain IEEE FP32 arithmetic, see
``triton_kernels.py``. The GEMM may differ from the reference only in the order of
the 128 FP32 additions inside a K-block, so its error is held to the standard FP32
summation bound ``(128 + K/128 + 3) · 2^-24 · (|A| @ |B|ᵀ)``; the report stores the
worst ratio error / bound, which must stay <= 1.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _bits_equal(q1, s1, q2, s2):
    import torch
    return bool(torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2))


def _tie_tile():
    """One 128-wide tile whose max is 448 (scale exactly 1) holding exact E4M3 rounding ties."""
    import torch
    ties = [1.0625, 1.1875, 1.9375, 240.0, 440.0, 2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10, 0.0]
    row = torch.zeros(128)
    row[0] = 448.0
    row[1:1 + len(ties)] = torch.tensor(ties)
    row[20:20 + len(ties)] = -torch.tensor(ties)
    return row[None, :]


def _gemm_error_ratio(out, a_q, a_s, b_q, b_s):
    """max |out - exact| / FP32 summation bound, over all outputs."""
    from dsctl.fp8 import reference as ref
    m, k = a_q.shape
    n = b_q.shape[0]
    a = a_q.double() * ref.expand_scales(a_s, m, k).double()
    b = b_q.double() * ref.expand_scales(b_s, n, k).double()
    bound = (ref.BLOCK + ref.ceil_div(k, ref.BLOCK) + 3) * 2.0**-24 * (a.abs() @ b.abs().T) + 1e-30
    return ((out.double() - a @ b.T).abs() / bound).max().item()


def _quant_report(ref, tk):
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 300, generator=g) * torch.logspace(-3, 2, 300)
    w = torch.randn(200, 300, generator=g) * 0.02
    w[150, 260] = 3.0  # an outlier block
    # Magnitudes log-uniform over 2^-13..2^9 with each row's max at 448 (scale 1): about a
    # third fall below E4M3's smallest normal (2^-6), where the grid changes rule.
    wide = torch.sign(torch.randn(64, 256, generator=g)) * torch.exp2(torch.rand(64, 256, generator=g) * 22 - 13)
    wide[:, 0] = 448.0
    return {
        "act_random": _bits_equal(*ref.act_quant(x), *tk.act_quant(x)),
        "act_log_uniform_with_subnormals": _bits_equal(*ref.act_quant(wide), *tk.act_quant(wide)),
        "act_transposed_view": _bits_equal(*ref.act_quant(x.t()), *tk.act_quant(x.t())),
        "act_3d": _bits_equal(*ref.act_quant(x.view(7, 10, 300)), *tk.act_quant(x.view(7, 10, 300))),
        "act_ties": _bits_equal(*ref.act_quant(_tie_tile()), *tk.act_quant(_tie_tile())),
        "weight_partial_blocks": _bits_equal(*ref.weight_quant(w), *tk.weight_quant(w)),
    }


def _gemm_report(ref, tk):
    import torch
    g = torch.Generator().manual_seed(1)
    a_q, a_s = ref.act_quant(torch.randn(70, 300, generator=g))
    w_q, w_s = ref.weight_quant(torch.randn(200, 300, generator=g) * 0.02)
    bt_q, bt_s = ref.act_quant(torch.randn(96, 300, generator=g))
    dy_q, dy_s = ref.act_quant(torch.randn(70, 200, generator=g))
    cases = {
        "gemm_block_scaled_b": (a_q, a_s, w_q, w_s),
        "gemm_per_row_b": (a_q, a_s, bt_q, bt_s),  # wgrad layout: both operands 1x128
        "gemm_transposed_weight_view": (dy_q, dy_s, w_q.t(), w_s.t()),  # dgrad layout
    }
    report = {}
    for name, operands in cases.items():
        out = tk.fp8_gemm(*operands)
        report[name] = _gemm_error_ratio(out, *operands)
        # Against the per-K-block reference, the kernel's own arithmetic (ref.fp8_gemm, one
        # FP32 matmul of the dequantized operands, rounds in another order).
        report[name + "_vs_reference_max_abs"] = (out - ref.fp8_gemm_blockwise(*operands)).abs().max().item()
    bf16 = tk.fp8_gemm(*cases["gemm_block_scaled_b"], out_dtype=torch.bfloat16)
    report["gemm_bf16_matches_reference"] = bool(
        bf16.dtype == torch.bfloat16
        and torch.equal(bf16, ref.fp8_gemm_blockwise(*cases["gemm_block_scaled_b"], out_dtype=torch.bfloat16)))
    return report


def _linear_report():
    """Fp8Linear forward/backward with the backend forced to Triton vs to torch."""
    import torch
    from torch import nn

    from dsctl.fp8 import Fp8Linear
    torch.manual_seed(2)
    layer = Fp8Linear.from_linear(nn.Linear(300, 200))
    x = torch.randn(3, 50, 300)
    dy = torch.randn(3, 50, 200)
    results = {}
    for backend in ("torch", "triton"):
        os.environ["DSCTL_FP8_BACKEND"] = backend
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        y = layer(xi)
        y.backward(dy)
        results[backend] = (y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    rel = [((t - r).norm() / r.norm()).item() for t, r in zip(results["triton"], results["torch"])]
    return {"linear_rel_diff_y_dx_dw_db": rel}


def _worker() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "the worker must start with TRITON_INTERPRET=1"
    from dsctl.fp8 import reference as ref
    from dsctl.fp8 import triton_kernels as tk
    report = {**_quant_report(ref, tk), **_gemm_report(ref, tk), **_linear_report()}
    print(json.dumps(report))


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--worker"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["act_random", "act_log_uniform_with_subnormals", "act_transposed_view", "act_3d",
                                  "weight_partial_blocks"])
def test_triton_quant_kernels_are_bit_identical_to_reference(report, case):
    assert report[case] is True


def test_triton_act_quant_rounds_ties_to_even_like_torch(report):
    assert report["act_ties"] is True


@pytest.mark.parametrize("case", ["gemm_block_scaled_b", "gemm_per_row_b", "gemm_transposed_weight_view"])
def test_triton_gemm_within_fp32_summation_bound_of_exact_result(report, case):
    assert report[case] <= 1.0


@pytest.mark.parametrize("case", ["gemm_block_scaled_b", "gemm_per_row_b", "gemm_transposed_weight_view"])
def test_triton_gemm_tracks_reference_closely(report, case):
    # Same products, same block order; only the FP32 add order inside a block may differ.
    assert report[case + "_vs_reference_max_abs"] < 1e-3


def test_triton_gemm_bf16_output_matches_reference(report):
    assert report["gemm_bf16_matches_reference"] is True


def test_fp8_linear_on_triton_backend_matches_torch_backend(report):
    assert all(r < 1e-5 for r in report["linear_rel_diff_y_dx_dw_db"]), report["linear_rel_diff_y_dx_dw_db"]


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
