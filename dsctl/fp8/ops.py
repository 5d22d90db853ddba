"""The one place that decides which FP8 backend runs: Triton kernels or the torch emulation.

Rule: tensors on a CUDA GPU with native FP8 (compute capability >= 8.9: Ada, Hopper
and later) use the Triton kernels; everything else (CPU, older GPUs) uses the torch
reference, which produces the same E4M3 values and the same block-scaled sums (up to
FP32 rounding order: it dequantizes and runs one FP32 matmul), just without FP8
tensor cores. ``DSCTL_FP8_BACKEND=torch|triton`` overrides the choice
(``triton`` on CPU needs ``TRITON_INTERPRET=1``, which is how the tests run the
kernels without a GPU). The variable is read on every call, so there is no module
state to reset between tests.
"""

from __future__ import annotations

import functools
import os

import torch

from dsctl.fp8 import reference
from dsctl.fp8.reference import BLOCK

BACKEND_ENV = "DSCTL_FP8_BACKEND"
"""Environment variable that forces a backend: ``auto`` (default), ``torch`` or ``triton``."""

_BACKENDS = ("auto", "torch", "triton")
_MIN_FP8_CAPABILITY = (8, 9)


@functools.lru_cache(maxsize=None)
def _cuda_device_has_fp8(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= _MIN_FP8_CAPABILITY


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def select_backend(device: torch.device) -> str:
    """'triton' or 'torch' for tensors on ``device`` (see the module docstring for the rule)."""
    forced = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if forced not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={forced!r} is not one of {', '.join(_BACKENDS)}")
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{BACKEND_ENV}=triton on a {device.type} tensor needs TRITON_INTERPRET=1 "
                               "(the Triton interpreter); unset it to use the torch emulation")
        return "triton"
    if device.type == "cuda" and _triton_available() and _cuda_device_has_fp8(device.index or 0):
        return "triton"
    return "torch"


def _impl(device: torch.device):
    if select_backend(device) == "triton":
        from dsctl.fp8 import triton_kernels  # imported lazily: CPU-only runs never need triton
        return triton_kernels
    return reference


def act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """1×block quantization along the last dim; see :func:`dsctl.fp8.reference.act_quant`."""
    return _impl(x.device).act_quant(x, block)


def act_dequant(x_fp8: torch.Tensor, scales: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """FP32 values of 1×block-quantized ``x_fp8``: elementwise, so the torch form serves every device."""
    return reference.act_dequant(x_fp8, scales, block)


def weight_quant(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """block×block quantization of a 2-D weight; see :func:`dsctl.fp8.reference.weight_quant`."""
    return _impl(w.device).weight_quant(w, block)


def fp8_gemm(a_fp8: torch.Tensor, a_scales: torch.Tensor, b_fp8: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype = torch.float32, block: int = BLOCK) -> torch.Tensor:
    """Block-scaled ``a @ b.T`` with FP32 accumulation; see :func:`dsctl.fp8.reference.fp8_gemm`."""
    return _impl(a_fp8.device).fp8_gemm(a_fp8, a_scales, b_fp8, b_scales, out_dtype=out_dtype, block=block)
