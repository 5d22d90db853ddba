"""What a model's FP8 conversion covers: the share of Linear FLOPs that run in FP8 and the
activation memory that caching Linear inputs in FP8 saves, measured on one forward pass."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from dsctl.fp8.linear import Fp8Linear


def fp8_coverage(model: nn.Module, forward: Callable[[], Any]) -> dict[str, float]:
    """Run `forward()` (one pass of `model`) with a hook on every Linear and return
    `coverage_report` of what it counted:

    fp8_linear_flop_share   FLOPs of converted Linears / FLOPs of all Linears (the output
                            head and the router gates stay in high precision by design;
                            routed experts count the tokens they actually received)
    fp8_activation_mb_saved bytes of saved-for-backward Linear inputs that FP8 caching
                            (1 byte + one FP32 scale per 128) spares against the inputs'
                            own precision, for this pass, in MB
    """
    return coverage_report(linear_totals(model, forward))


def linear_totals(model: nn.Module, forward: Callable[[], Any]) -> dict[str, float]:
    """FLOPs of all Linears ("all"), of FP8 Linears ("fp8") and activation bytes FP8 caching
    spares ("saved") in one `forward()` of `model`: sums, so a pipeline adds its stages'."""
    totals = {"all": 0.0, "fp8": 0.0, "saved": 0.0}

    def count(module: nn.Linear, inputs: tuple) -> None:
        x = inputs[0]
        rows = x.numel() // module.in_features
        flops = 2.0 * rows * module.in_features * module.out_features
        totals["all"] += flops
        if isinstance(module, Fp8Linear):
            totals["fp8"] += flops
            totals["saved"] += rows * module.in_features * (x.element_size() - 1 - 4 / module.block_size)

    handles = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return totals


def coverage_report(totals: dict[str, float]) -> dict[str, float]:
    return {"fp8_linear_flop_share": round(totals["fp8"] / max(totals["all"], 1.0), 4),
            "fp8_activation_mb_saved": round(totals["saved"] / 2**20, 3)}
