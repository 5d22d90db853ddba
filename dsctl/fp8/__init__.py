"""Fine-grained FP8 (E4M3) training as in DeepSeek-V3.

Public API:

* :func:`act_quant`, :func:`weight_quant`, :func:`fp8_gemm` — dispatching ops
  (Triton on FP8-capable CUDA GPUs, torch emulation elsewhere; see ``ops.py``);
* :func:`act_dequant`, :func:`weight_dequant` — inverses, for inspection and tests;
* :class:`Fp8Linear`, :func:`convert_to_fp8` — the training-time drop-in.

``reference.py`` defines the numerics; ``triton_kernels.py`` implements them on GPU.
"""

from dsctl.fp8.linear import DEFAULT_SKIP, Fp8Linear, convert_to_fp8
from dsctl.fp8.ops import act_quant, fp8_gemm, select_backend, weight_quant
from dsctl.fp8.reference import BLOCK, FP8_DTYPE, FP8_MAX, act_dequant, weight_dequant

__all__ = [
    "BLOCK", "DEFAULT_SKIP", "FP8_DTYPE", "FP8_MAX", "Fp8Linear", "act_dequant", "act_quant",
    "convert_to_fp8", "fp8_gemm", "select_backend", "weight_dequant", "weight_quant",
]
