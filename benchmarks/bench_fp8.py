"""Fine-grained FP8 GEMM against its peers, in one run.

    python benchmarks/bench_fp8.py [--repeats 5] [--json out.json]

With an FP8-capable CUDA GPU (compute capability >= 8.9) it prints, per shape
M x N x K (A is M x K, B is N x K, C = A @ B^T):
* Triton block-scaled FP8 GEMM TFLOP/s, operands already quantized (GEMM only),
* the same including the 1x128 activation quantization of A (what Fp8Linear pays),
* BF16 ``torch.matmul`` TFLOP/s (cuBLAS) and the ratio FP8 / BF16,
* cuBLAS per-tensor-scaled FP8 (``torch._scaled_mm``) when this torch build has it,
* the Triton result's relative difference to the torch reference on the same GPU.

Without one (or with ``--cpu``), it says so and measures instead what the CPU
emulation costs, on ``--threads`` threads (default 2): an Fp8Linear training step
(forward + backward, all three GEMMs emulated) against nn.Linear's, as the ratio
fp8-emulated / fp32, at MoE/attention-sized shapes of 4096 tokens, plus the
reference GEMM alone (quantize + dequantize + one FP32 matmul) against an FP32
matmul. Those CPU numbers are the price of *emulating* FP8, not FP8 speed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from dsctl.fp8 import Fp8Linear, ops
from dsctl.fp8 import reference as ref

GPU_SHAPES = [  # (name, M, N, K)
    ("square", 4096, 4096, 4096),
    ("V3 MLA/MoE scale: 4096 tokens, 16384 -> 7168", 4096, 7168, 16384),
    ("V3-like wide N, short K", 8192, 7168, 2048),
    ("100m MLP up: 8x1024 tokens, 512->1536", 8192, 1536, 512),
    ("100m MLP down: 1536->512", 8192, 512, 1536),
    ("100m routed expert: 2048 tokens, 512->256", 2048, 256, 512),
]
CPU_SHAPES = [  # (name, tokens M, in_features K, out_features N)
    ("expert up: 128->384", 4096, 128, 384),
    ("narrow expert: 64->128", 4096, 64, 128),
    ("wide N: 128->4096", 4096, 128, 4096),
]


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _tflops(m: int, n: int, k: int, ms: float) -> float:
    return 2 * m * n * k / (ms * 1e-3) / 1e12


def _scaled_mm_ms(x, w, do_bench):
    """cuBLAS FP8 with one scale per tensor: the coarse-grained peer."""
    if not hasattr(torch, "_scaled_mm"):
        return None
    x8 = (x / (x.abs().max() / 448)).to(torch.float8_e4m3fn)
    w8 = (w / (w.abs().max() / 448)).to(torch.float8_e4m3fn)
    one = torch.ones((), device=x.device)
    try:
        return do_bench(lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    except (RuntimeError, TypeError):  # older builds / layouts it does not support
        return None


def bench_gpu(repeats: int) -> list[dict]:
    return [_bench_gpu_shape(name, m, n, k, repeats) for name, m, n, k in GPU_SHAPES]


def _bench_gpu_shape(name: str, m: int, n: int, k: int, repeats: int) -> dict:
    from triton.testing import do_bench

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    xq, xs = ops.act_quant(x)
    wq, ws = ops.weight_quant(w)
    fp8_ms = do_bench(lambda: ops.fp8_gemm(xq, xs, wq, ws, out_dtype=torch.bfloat16), rep=20 * repeats)
    fp8_q_ms = do_bench(lambda: ops.fp8_gemm(*ops.act_quant(x), wq, ws, out_dtype=torch.bfloat16),
                        rep=20 * repeats)
    bf16_ms = do_bench(lambda: torch.matmul(x, w.t()), rep=20 * repeats)
    scaled_ms = _scaled_mm_ms(x, w, do_bench)
    triton_out = ops.fp8_gemm(xq, xs, wq, ws)
    reference_out = ref.fp8_gemm(xq, xs, wq, ws)
    return dict(
        shape=name, m=m, n=n, k=k,
        fp8_triton_tflops=_tflops(m, n, k, fp8_ms),
        fp8_triton_with_act_quant_tflops=_tflops(m, n, k, fp8_q_ms),
        bf16_matmul_tflops=_tflops(m, n, k, bf16_ms),
        fp8_over_bf16=bf16_ms / fp8_ms,
        cublas_fp8_per_tensor_tflops=None if scaled_ms is None else _tflops(m, n, k, scaled_ms),
        triton_vs_reference_rel=((triton_out - reference_out).norm() / reference_out.norm()).item(),
    )


def _interleaved_best(fns: dict, repeats: int) -> dict:
    """Best wall time of each function, the candidates run in turn so load drifts hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bench_cpu_emulation(repeats: int) -> list[dict]:
    return [_bench_cpu_shape(name, m, k, n, repeats) for name, m, k, n in CPU_SHAPES]


def _bench_cpu_shape(name: str, m: int, k: int, n: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g, requires_grad=True)
    dy = torch.randn(m, n, generator=g)
    w = torch.randn(n, k, generator=g) * 0.02
    lin = nn.Linear(k, n)
    fp8_lin = Fp8Linear.from_linear(nn.Linear(k, n))

    def step(module):
        def run():
            x.grad = module.weight.grad = module.bias.grad = None  # as zero_grad(set_to_none=True)
            module(x).backward(dy)
        return run

    xd = x.detach()
    best = _interleaved_best({
        "linear": step(lin), "fp8_linear": step(fp8_lin),
        "matmul": lambda: xd @ w.T, "fp8_gemm": lambda: ref.fp8_gemm(*ref.act_quant(xd), *ref.weight_quant(w)),
    }, repeats)
    return dict(
        shape=name, m=m, n=n, k=k,
        linear_fwd_bwd_ms=best["linear"] * 1e3, fp8_linear_fwd_bwd_ms=best["fp8_linear"] * 1e3,
        fwd_bwd_ratio=best["fp8_linear"] / best["linear"],
        fp32_matmul_ms=best["matmul"] * 1e3, emulated_fp8_gemm_ms=best["fp8_gemm"] * 1e3,
        gemm_ratio=best["fp8_gemm"] / best["matmul"],
    )


def _print_table(rows: list[dict]) -> None:
    for row in rows:
        cells = [f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                 for key, value in row.items() if key not in ("m", "n", "k") and value is not None]
        print(f"  {row['m']}x{row['n']}x{row['k']}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (best is kept)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--cpu", action="store_true", help="measure the CPU emulation even with an FP8 GPU")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the emulation section")
    args = parser.parse_args()
    has_fp8_gpu = torch.cuda.is_available() and ops.select_backend(torch.device("cuda")) == "triton"
    if has_fp8_gpu and not args.cpu:
        print(f"GPU: {torch.cuda.get_device_name()} — Triton FP8 GEMM vs BF16 torch.matmul (TFLOP/s)")
        rows = bench_gpu(args.repeats)
    else:
        if not has_fp8_gpu:
            reason = "a CUDA GPU without FP8 (needs compute capability >= 8.9)" if torch.cuda.is_available() \
                else "no CUDA GPU present"
            print(f"{reason}: FP8 GPU throughput NOT measured.")
        torch.set_num_threads(args.threads)
        print(f"CPU EMULATION OVERHEAD (torch reference vs FP32, {torch.get_num_threads()} threads; "
              "rows M tokens x N out x K in) — the cost of emulating FP8, not FP8 speed:")
        rows = bench_cpu_emulation(args.repeats)
    _print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": has_fp8_gpu, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
