"""Deferred weight gradients (the split backward's b and W ops), in one process.

The GEMM counts are what the split is for: a b pass runs only the dgrad GEMMs, its W
only the wgrad GEMMs, and the two together exactly those of one full backward.
"""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dsctl.fp8 import Fp8Linear, convert_to_fp8
from dsctl.parallel.weight_grad import DeferrableLinear, collect_weight_grads, make_weight_grads_deferrable

aten = torch.ops.aten
# Linear layers reach the dispatcher as mm/addmm (linear and matmul decompose before a
# dispatch mode sees them); the others are listed so no product could go uncounted.
_MATMULS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.matmul, aten.linear}


class MatmulCount(TorchDispatchMode):
    """Counts the matrix products dispatched while active (autograd's backward included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket in _MATMULS
        return func(*args, **(kwargs or {}))


@pytest.fixture(autouse=True)
def torch_fp8_backend(monkeypatch):
    monkeypatch.setenv("DSCTL_FP8_BACKEND", "torch")


def three_linear_stage(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 8))


def stage_input(seed: int = 1, rows: int = 6) -> torch.Tensor:
    # (2, rows, 16): a leading batch dim, as hidden states have
    return torch.randn(2, rows, 16, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _param_grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_split_backward_runs_dgrad_then_wgrad_gemms_only_once_each():
    plain = three_linear_stage()
    split = copy.deepcopy(plain)
    assert make_weight_grads_deferrable(split) == 3
    x_plain, x_split = stage_input(), stage_input()

    out = plain(x_plain)
    with MatmulCount() as full:
        out.backward(torch.ones_like(out))

    out = split(x_split)
    with MatmulCount() as b, collect_weight_grads() as queued:
        out.backward(torch.ones_like(out))
    assert all(p.grad is None for p in split.parameters())  # nothing but dgrad yet
    with MatmulCount() as w:
        for compute in queued:
            compute()

    assert (b.count, w.count, full.count) == (3, 3, 6)
    assert torch.equal(x_split.grad, x_plain.grad)
    for got, want in zip(_param_grads(split), _param_grads(plain), strict=True):
        assert torch.equal(got, want)


def test_stage_without_input_gradient_skips_the_first_dgrad():
    stage = three_linear_stage()
    make_weight_grads_deferrable(stage)
    out = stage(stage_input().detach())  # stage 0: its input is the batch
    with MatmulCount() as b, collect_weight_grads() as queued:
        out.sum().backward()
    with MatmulCount() as w:
        for compute in queued:
            compute()
    assert (b.count, w.count) == (2, 3)


def test_deferred_grads_accumulate_over_micro_batches_like_autograd():
    plain, split = three_linear_stage(), three_linear_stage()
    make_weight_grads_deferrable(split)
    queues = []
    for mb in range(3):
        plain(stage_input(seed=mb)).square().mean().backward()
        with collect_weight_grads() as queued:
            split(stage_input(seed=mb)).square().mean().backward()
        queues.append(queued)
    for queued in queues:  # W ops come later, in schedule order
        for compute in queued:
            compute()
    for got, want in zip(_param_grads(split), _param_grads(plain), strict=True):
        assert torch.equal(got, want)


def test_outside_a_split_backward_it_is_nn_linear_bit_for_bit():
    torch.manual_seed(3)
    for bias in (True, False):
        plain = nn.Linear(16, 8, bias=bias)
        deferrable = copy.deepcopy(plain)
        assert make_weight_grads_deferrable(deferrable) == 1  # the root module itself
        for autocast in (False, True):  # CPU bf16 autocast: computed in bf16, grads in fp32
            x = stage_input(seed=4)
            outs, grads = [], []
            for module in (plain, deferrable):
                module.zero_grad(set_to_none=True)
                x.grad = None
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = module(x)
                y.backward(torch.ones_like(y))
                outs.append(y.detach())
                grads.append([x.grad.clone(), *_param_grads(module)])
            assert outs[0].dtype == outs[1].dtype
            assert torch.equal(outs[0], outs[1])
            for got, want in zip(grads[1], grads[0], strict=True):
                assert got.dtype == want.dtype and torch.equal(got, want)


def test_making_deferrable_keeps_parameters_and_state_dict_and_is_idempotent():
    stage = three_linear_stage()
    params = list(stage.parameters())
    keys = list(stage.state_dict())
    assert make_weight_grads_deferrable(stage) == 3
    assert make_weight_grads_deferrable(stage) == 0
    assert all(type(m) is DeferrableLinear for m in stage if isinstance(m, nn.Linear))
    assert list(stage.parameters()) == params and all(a is b for a, b in zip(stage.parameters(), params))
    assert list(stage.state_dict()) == keys


def test_fp8_conversion_and_deferral_compose_in_either_order():
    fp8_first = three_linear_stage()
    convert_to_fp8(fp8_first)
    assert make_weight_grads_deferrable(fp8_first) == 0  # Fp8Linear defers its own wgrad
    deferral_first = three_linear_stage()
    make_weight_grads_deferrable(deferral_first)
    assert convert_to_fp8(deferral_first) == 3
    for stage in (fp8_first, deferral_first):
        assert [type(m) for m in stage if isinstance(m, nn.Linear)] == [Fp8Linear] * 3


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_deferred_wgrad_equals_immediate_bit_for_bit(bias):
    torch.manual_seed(5)
    immediate = Fp8Linear(300, 200, bias=bias)  # partial 128-blocks on both axes
    deferred = copy.deepcopy(immediate)
    g = torch.Generator().manual_seed(6)
    x, dy = torch.randn(4, 37, 300, generator=g), torch.randn(4, 37, 200, generator=g)
    x_now, x_later = x.clone().requires_grad_(), x.clone().requires_grad_()

    immediate(x_now).backward(dy)
    with collect_weight_grads() as queued:
        deferred(x_later).backward(dy)
    assert deferred.weight.grad is None and len(queued) == 1
    assert torch.equal(x_later.grad, x_now.grad)
    queued[0]()
    for got, want in zip(_param_grads(deferred), _param_grads(immediate), strict=True):
        assert torch.equal(got, want)


def test_one_split_backward_at_a_time():
    with collect_weight_grads(), pytest.raises(RuntimeError, match="already active"):
        with collect_weight_grads():
            pass
