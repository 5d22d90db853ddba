"""The Triton FP8 kernels compile, ahead of time and without a GPU, for Hopper and Ada.

The interpreter tests (test_fp8_triton.py) check the kernels' arithmetic; this one
checks the other half of "works on a GPU": that Triton lowers them for sm_90 (H100)
and sm_89 (L40/4090) with the ptxas bundled in the triton wheel, and that the PTX
uses what the design relies on: FP8 tensor-core MMAs for the GEMM (wgmma on Hopper,
mma.sync on Ada), the hardware E4M3 conversion, and IEEE division for the scales.
Compilation takes ~30 s of CPU, hence ``slow``. It runs in a subprocess without
``TRITON_INTERPRET``, because an interpreted kernel cannot be compiled.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_GEMM_ARGS = ["a_ptr", "b_ptr", "c_ptr", "as_ptr", "bs_ptr", "M", "N", "K", "stride_am", "stride_ak", "stride_bn",
              "stride_bk", "stride_cm", "stride_cn", "stride_asm", "stride_ask", "stride_bsn", "stride_bsk"]


def _compile_all(capability: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dsctl.fp8 import triton_kernels as tk

    def ptx(fn, signature, constexprs, **options):
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options).asm["ptx"]

    gemm_sig = dict(zip(_GEMM_ARGS, ["*fp8e4nv", "*fp8e4nv", "*bf16", "*fp32", "*fp32"] + ["i32"] * 13))
    gemm_sig.update({k: "constexpr" for k in ("B_ROWS_PER_SCALE", "BLOCK_M", "BLOCK_N", "BLOCK_K")})
    gemm = ptx(tk._fp8_gemm_kernel, gemm_sig,
               {"B_ROWS_PER_SCALE": 128, "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=8, num_stages=3)
    act = ptx(tk._act_quant_kernel,
              {"x_ptr": "*bf16", "y_ptr": "*fp8e4nv", "s_ptr": "*fp32", "M": "i32", "K": "i32", "stride_xm": "i32",
               "stride_xk": "i32", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"}, {"BLOCK_M": 32, "BLOCK_K": 128})
    weight = ptx(tk._weight_quant_kernel,
                 {"w_ptr": "*fp32", "y_ptr": "*fp8e4nv", "s_ptr": "*fp32", "N": "i32", "K": "i32", "stride_wn": "i32",
                  "stride_wk": "i32", "BLOCK": "constexpr"}, {"BLOCK": 128})
    return {
        "gemm_wgmma": "wgmma" in gemm and "e4m3" in gemm,
        "gemm_mma_sync": "mma.sync" in gemm and "e4m3" in gemm,
        "quant_e4m3_cvt": all("cvt.rn.satfinite.e4m3x2.f32" in p for p in (act, weight)),
        "quant_ieee_div": all("div.rn.f32" in p and "div.full.f32" not in p for p in (act, weight)),
    }


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    ptxas = Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this triton wheel ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO_ROOT), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, __file__, "--worker"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"compile worker failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_gemm_compiles_to_wgmma_on_hopper(compiled):
    assert compiled["90"]["gemm_wgmma"]


@pytest.mark.slow
def test_gemm_compiles_to_mma_sync_on_ada(compiled):
    assert compiled["89"]["gemm_mma_sync"]


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["89", "90"])
def test_quant_kernels_use_hardware_e4m3_cast_and_ieee_division(compiled, capability):
    assert compiled[capability]["quant_e4m3_cvt"]
    assert compiled[capability]["quant_ieee_div"]


if __name__ == "__main__" and "--worker" in sys.argv:
    print(json.dumps({str(cap): _compile_all(cap) for cap in (89, 90)}))
