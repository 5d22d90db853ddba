"""Fp8Linear (FP8 fprop/dgrad/wgrad) and convert_to_fp8, on the torch emulation backend."""

import pytest
import torch
from torch import nn

from dsctl.fp8 import DEFAULT_SKIP, Fp8Linear, convert_to_fp8, select_backend
from dsctl.fp8 import reference as ref
from dsctl.fp8.reference import BLOCK, FP8_MAX


@pytest.fixture(autouse=True)
def auto_backend(monkeypatch):
    """Whatever the caller exported, these tests check the automatic choice (torch on CPU)."""
    monkeypatch.setenv("DSCTL_FP8_BACKEND", "auto")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _pair(in_features=300, out_features=200, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_features, out_features, bias=bias)
    return lin, Fp8Linear.from_linear(lin)


def _grads(module, x, dy):
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    y = module(x)
    y.backward(dy)
    grads = {"x": x.grad, "weight": module.weight.grad.clone()}
    if module.bias is not None:
        grads["bias"] = module.bias.grad.clone()
    return y.detach(), grads


def test_cpu_tensors_use_the_torch_emulation():
    assert select_backend(torch.device("cpu")) == "torch"


def test_forward_and_all_grads_close_to_nn_linear():
    lin, fp8 = _pair()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 37, 300, generator=g)  # 148 tokens, K = 300: partial tiles on both token and K axes
    dy = torch.randn(4, 37, 200, generator=g)
    y_ref, g_ref = _grads(lin, x, dy)
    y, g8 = _grads(fp8, x, dy)
    # E4M3 keeps 3 mantissa bits (~2^-5 typical relative round-off per operand): measured ~3.6%.
    assert 0 < _rel(y, y_ref) < 0.06
    assert 0 < _rel(g8["x"], g_ref["x"]) < 0.06
    assert 0 < _rel(g8["weight"], g_ref["weight"]) < 0.06
    assert _rel(g8["bias"], g_ref["bias"]) < 1e-6  # the bias path is never quantized


def test_forward_is_exactly_the_block_scaled_gemm_of_1x128_and_128x128_tiles():
    lin, fp8 = _pair(256, 384, seed=2)
    x = torch.randn(10, 256)
    x_q, x_s = ref.act_quant(x)
    w_q, w_s = ref.weight_quant(lin.weight.detach())
    expected = ref.fp8_gemm(x_q, x_s, w_q, w_s) + lin.bias.detach()
    assert torch.equal(fp8(x).detach(), expected)


def test_dgrad_tiles_dy_along_out_features_and_reuses_transposed_weight_blocks():
    lin, fp8 = _pair(256, 384, bias=False, seed=3)
    x, dy = torch.randn(10, 256), torch.randn(10, 384)
    _, grads = _grads(fp8, x, dy)
    dy_q, dy_s = ref.act_quant(dy)
    w_q, w_s = ref.weight_quant(lin.weight.detach())
    # Not bit-equal: CPU BLAS may sum a contiguous and a transposed operand in different
    # orders. Any other tiling would be off by percents, not by FP32 round-off.
    assert _rel(grads["x"], ref.fp8_gemm(dy_q, dy_s, w_q.t(), w_s.t())) < 1e-6


def test_wgrad_tiles_both_operands_along_tokens():
    lin, fp8 = _pair(256, 384, bias=False, seed=4)
    x, dy = torch.randn(200, 256), torch.randn(200, 384)
    _, grads = _grads(fp8, x, dy)
    dyt_q, dyt_s = ref.act_quant(dy.t())  # (384, 200): tiles of 128 tokens per output channel
    cached = ref.act_dequant(*ref.act_quant(x))  # x as the forward cached it: FP8 in 1×128 tiles
    xt_q, xt_s = ref.act_quant(cached.t())  # re-tiled along the tokens
    assert torch.equal(grads["weight"], ref.fp8_gemm(dyt_q, dyt_s, xt_q, xt_s))


@pytest.mark.parametrize("dtype,plain_bytes", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_input_is_saved_for_backward_in_fp8_with_its_scales(dtype, plain_bytes):
    def saved_bytes(module, x):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sizes

    lin, fp8 = _pair(256, 384, bias=False, seed=5)
    lin, fp8 = lin.to(dtype), fp8.to(dtype)
    x = torch.randn(200, 256, dtype=dtype, requires_grad=True)
    assert plain_bytes * 200 * 256 in saved_bytes(lin, x)  # nn.Linear keeps x in its own precision
    fp8_saved = saved_bytes(fp8, x)
    assert 200 * 256 in fp8_saved and 200 * 2 * 4 in fp8_saved  # x as 1-byte E4M3 + 2 FP32 scales per row
    assert plain_bytes * 200 * 256 not in fp8_saved


def test_master_weight_and_grads_stay_fp32_with_bf16_activations():
    lin, fp8 = _pair(256, 256, seed=5)
    x = torch.randn(8, 256).bfloat16().requires_grad_()
    y = fp8(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert fp8.weight.dtype == fp8.weight.grad.dtype == torch.float32
    assert fp8.bias.grad.dtype == torch.float32


def test_output_takes_the_autocast_dtype():
    _, fp8 = _pair(256, 256, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fp8(torch.randn(8, 256))
    assert y.dtype == torch.bfloat16


def test_zero_tokens_gives_empty_output_and_zero_grads():
    _, fp8 = _pair(256, 128, seed=7)
    x = torch.randn(0, 256, requires_grad=True)
    y = fp8(x)
    y.sum().backward()
    assert y.shape == (0, 128) and torch.equal(fp8.weight.grad, torch.zeros_like(fp8.weight))


class _ToyBlock(nn.Module):
    """Names as in dsctl.model: a router `gate` beside experts' `gate_proj`, a norm, a head."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 256)
        self.input_layernorm = nn.LayerNorm(256)
        self.gate = nn.Linear(256, 128, bias=False)  # MoE router: must stay high precision
        self.gate_proj = nn.Linear(256, 512, bias=False)
        self.down_proj = nn.Linear(512, 256)
        self.kv_a_proj_with_mqa = nn.Linear(256, 40)  # narrower than one tile: a partial 40-row block
        self.lm_head = nn.Linear(256, 50, bias=False)


def test_convert_swaps_every_non_excluded_linear_narrow_ones_included():
    model = _ToyBlock()
    assert convert_to_fp8(model) == 3
    converted = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert converted == {"gate_proj", "down_proj", "kv_a_proj_with_mqa"}
    assert type(model.gate) is nn.Linear and type(model.lm_head) is nn.Linear
    assert convert_to_fp8(model) == 0  # idempotent
    assert "gate" in DEFAULT_SKIP


@pytest.mark.parametrize("in_features,out_features", [(64, 96), (200, 130)])
def test_linears_with_partial_blocks_convert_and_train_close_to_fp32(in_features, out_features):
    # 64 -> 96: K and N each a single partial tile. 200 -> 130: one whole and one partial
    # tile along each of K and N. 111 tokens: wgrad's token tiles are partial too.
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(in_features, out_features))
    reference = nn.Sequential(nn.Linear(in_features, out_features))
    reference.load_state_dict(model.state_dict())
    assert convert_to_fp8(model) == 1 and isinstance(model[0], Fp8Linear)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 37, in_features, generator=g)
    dy = torch.randn(3, 37, out_features, generator=g)
    y_ref, g_ref = _grads(reference[0], x, dy)
    y, g8 = _grads(model[0], x, dy)
    # The same FP8 error bound as for whole tiles (test_forward_and_all_grads_close_to_nn_linear).
    assert 0 < _rel(y, y_ref) < 0.06
    assert 0 < _rel(g8["x"], g_ref["x"]) < 0.06
    assert 0 < _rel(g8["weight"], g_ref["weight"]) < 0.06
    assert _rel(g8["bias"], g_ref["bias"]) < 1e-6
    # And the forward is the block-scaled GEMM of the partial-tile quantizations below.
    x2 = x.reshape(-1, in_features)
    expected = ref.fp8_gemm(*ref.act_quant(x2), *ref.weight_quant(model[0].weight.detach())) + model[0].bias.detach()
    assert torch.equal(y.reshape(-1, out_features), expected)


@pytest.mark.parametrize("in_features,out_features", [(64, 96), (200, 130)])
def test_partial_block_scales_are_amax_of_the_real_elements_over_448(in_features, out_features):
    g = torch.Generator().manual_seed(10)
    w = torch.randn(out_features, in_features, generator=g)
    x = torch.randn(111, in_features, generator=g)
    _, w_s = ref.weight_quant(w)
    _, x_s = ref.act_quant(x)
    _, xt_s = ref.act_quant(x.t())  # wgrad: tiles of tokens, 111 < 128 so one partial tile
    nb, kb = ref.ceil_div(out_features, BLOCK), ref.ceil_div(in_features, BLOCK)
    assert w_s.shape == (nb, kb) and x_s.shape == (111, kb) and xt_s.shape == (in_features, 1)
    for i in range(nb):
        for j in range(kb):
            block = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]  # slicing stops at the edge
            assert w_s[i, j] == block.abs().max() / FP8_MAX
    for j in range(kb):
        assert torch.equal(x_s[:, j], x[:, j * BLOCK:(j + 1) * BLOCK].abs().amax(1) / FP8_MAX)
    assert torch.equal(xt_s[:, 0], x.abs().amax(0) / FP8_MAX)


def test_convert_keeps_state_dict_keys_values_and_parameter_objects():
    model = _ToyBlock()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    convert_to_fp8(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [id(p) for p in model.parameters()] == params_before
    # An optimizer built before the swap still drives the converted layer's weight.
    w0 = model.down_proj.weight.detach().clone()
    model.down_proj(model.gate_proj(torch.randn(130, 256))).square().mean().backward()
    opt.step()
    assert not torch.equal(model.down_proj.weight, w0)


def test_convert_honours_custom_skip_and_min_features():
    model = _ToyBlock()
    assert convert_to_fp8(model, min_features=32, skip=("lm_head", "down_*")) == 3  # gate, gate_proj, kv_a
    assert type(model.down_proj) is nn.Linear and isinstance(model.gate, Fp8Linear)
    model = _ToyBlock()
    assert convert_to_fp8(model, min_features=BLOCK) == 2  # opt out of narrow layers: kv_a (40 wide) stays
    assert type(model.kv_a_proj_with_mqa) is nn.Linear and isinstance(model.down_proj, Fp8Linear)
    with pytest.raises(ValueError, match="min_features"):
        convert_to_fp8(_ToyBlock(), min_features=0)


def test_unknown_backend_override_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DSCTL_FP8_BACKEND", "cuda-fast")
    with pytest.raises(ValueError, match="DSCTL_FP8_BACKEND"):
        select_backend(torch.device("cpu"))
    monkeypatch.setenv("DSCTL_FP8_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        select_backend(torch.device("cpu"))
