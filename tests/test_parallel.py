"""Data and expert parallelism on 2 gloo processes equal the single-process computation.

One 2-process job (spawned once per module) runs every case and returns weights,
outputs and gradients; each test compares one of them with a single-process reference.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.parallel.data_parallel import all_reduce_grads
from dsctl.parallel.dist import DistInfo
from dsctl.parallel.expert_parallel import ExpertParallelMoE, apply_expert_parallel
from dsctl.parallel.launch import spawn_workers

WORLD, ROWS_PER_RANK, D = 2, 3, 6
NUM_EXPERTS, TOPK, TOKENS_PER_RANK = 4, 2, 7


class TinyNet(nn.Module):
    """Two blocks in ``layers`` (FSDP shards each) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(D, D), nn.Tanh()) for _ in range(2)])
        self.head = nn.Linear(D, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def build_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet()


def dp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(WORLD * ROWS_PER_RANK, D, generator=g), torch.randn(WORLD * ROWS_PER_RANK, 1, generator=g)


def sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sync=None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.mse_loss(model(x), y).backward()
    if sync is not None:
        sync(model)
    opt.step()


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_experts(seed: int = 1) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList([nn.Sequential(nn.Linear(D, 5), nn.SiLU(), nn.Linear(5, D)) for _ in range(NUM_EXPERTS)])


def routed_tokens(rank: int, skewed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's tokens and router choices; ``skewed`` sends every token to experts 0-1."""
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(TOKENS_PER_RANK, D, generator=g)
    scores = torch.randn(TOKENS_PER_RANK, NUM_EXPERTS, generator=g)
    if skewed:
        scores[:, 2:] = -1e9
    weight, idx = scores.sigmoid().topk(TOPK, dim=-1)
    return x, idx, weight / weight.sum(-1, keepdim=True)


def moe_reference(experts: nn.ModuleList, x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.stack([sum(weight[t, j] * experts[int(idx[t, j])](x[t]) for j in range(TOPK))
                        for t in range(x.shape[0])])


def _ep_case(rank: int, impl: str, skewed: bool) -> dict:
    local = NUM_EXPERTS // WORLD
    experts = build_experts()
    moe = ExpertParallelMoE(nn.ModuleList(experts[rank * local:(rank + 1) * local]), NUM_EXPERTS, impl=impl)
    x, idx, weight = routed_tokens(rank, skewed)
    x.requires_grad_(True)
    y = moe(x, idx, weight)
    (y ** 2).sum().backward()
    grads = {f"{rank * local + i}.{name}": None if p.grad is None else p.grad.clone()
             for i, e in enumerate(moe.local_experts) for name, p in e.named_parameters()}
    return {"y": y.detach(), "x_grad": x.grad.clone(), "expert_grads": grads}


def tiny_moe_model() -> DeepSeekV3:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", n_routed_experts=8, seq_aux_loss_alpha=0.1, num_nextn_predict_layers=0)
    return DeepSeekV3(cfg).train()


def model_tokens(rank: int) -> torch.Tensor:
    return torch.randint(0, 2048, (2, 6), generator=torch.Generator().manual_seed(20 + rank))


def _ep_model_case(rank: int) -> dict:
    model = tiny_moe_model()
    apply_expert_parallel(model)
    ids = model_tokens(rank)
    logits = model(ids)
    compute_loss(model, ids, mtp_weight=0.0).loss.backward()
    return {"logits": logits.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                                 if p.grad is not None}}


def _job(info: DistInfo) -> dict:
    x, y = dp_batch()
    mine = slice(info.rank * ROWS_PER_RANK, (info.rank + 1) * ROWS_PER_RANK)
    manual = build_model()
    sgd_step(manual, x[mine], y[mine], sync=all_reduce_grads)
    return {
        "info": [info.rank, info.world_size, info.local_rank, info.backend],
        "manual": full_state(manual),
        "ep_native": _ep_case(info.rank, "native", skewed=False),
        "ep_p2p": _ep_case(info.rank, "p2p", skewed=False),
        "ep_skewed": _ep_case(info.rank, "native", skewed=True),
        "ep_model": _ep_model_case(info.rank),
    }


@pytest.fixture(scope="module")
def job() -> list[dict]:
    return spawn_workers(_job, WORLD, timeout_s=120)


@pytest.fixture(scope="module")
def single_process_step() -> dict[str, torch.Tensor]:
    model = build_model()
    sgd_step(model, *dp_batch())
    return full_state(model)


def test_init_from_torchrun_env_uses_gloo_on_cpu(job):
    assert [r["info"] for r in job] == [[0, 2, 0, "gloo"], [1, 2, 1, "gloo"]]


def test_data_parallel_step_equals_single_process_on_concatenated_batch(job, single_process_step):
    """all_reduce_grads, what the training strategies use."""
    initial = full_state(build_model())
    for rank in range(WORLD):
        state = job[rank]["manual"]
        assert state.keys() == single_process_step.keys()
        for name, want in single_process_step.items():
            torch.testing.assert_close(state[name], want, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")
            assert not torch.equal(want, initial[name])  # the step really moved every weight


@pytest.mark.parametrize("case", ["ep_native", "ep_p2p", "ep_skewed"])
def test_expert_parallel_moe_equals_single_process_outputs_and_grads(job, case):
    experts = build_experts()
    ref_y = []
    ref_x_grads = []
    for rank in range(WORLD):
        x, idx, weight = routed_tokens(rank, skewed=case == "ep_skewed")
        x.requires_grad_(True)
        y = moe_reference(experts, x, idx, weight)
        (y ** 2).sum().backward()  # expert grads accumulate over both ranks' tokens
        ref_y.append(y.detach())
        ref_x_grads.append(x.grad)
    ref_grads = {f"{i}.{n}": p.grad for i, e in enumerate(experts) for n, p in e.named_parameters()}
    seen = set()
    for rank in range(WORLD):
        res = job[rank][case]
        torch.testing.assert_close(res["y"], ref_y[rank], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["x_grad"], ref_x_grads[rank], rtol=1e-5, atol=1e-6)
        for name, grad in res["expert_grads"].items():
            if ref_grads[name] is None:  # no token chose it: not run, no gradient, as in one process
                assert grad is None, name
            else:
                torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)
            seen.add(name)
    assert seen == set(ref_grads)  # every expert lives on exactly one rank


def test_expert_parallel_deepseek_v3_matches_single_process_logits_and_grads(job):
    per_rank_ref = []
    for rank in range(WORLD):
        model = tiny_moe_model()
        ids = model_tokens(rank)
        logits = model(ids)
        compute_loss(model, ids, mtp_weight=0.0).loss.backward()
        per_rank_ref.append((logits.detach(), dict(model.named_parameters())))
    per_rank = tiny_moe_model().config.n_routed_experts // WORLD
    for rank in range(WORLD):
        res = job[rank]["ep_model"]
        torch.testing.assert_close(res["logits"], per_rank_ref[rank][0], rtol=1e-5, atol=1e-6)
        for name, grad in res["grads"].items():
            parts = name.split(".")
            if "experts" in parts and "shared_experts" not in parts:
                # local expert i here is global expert rank*L+i; it served both ranks' tokens
                i = parts.index("experts") + 1
                parts[i] = str(rank * per_rank + int(parts[i]))
                ref = [dict(r[1])[".".join(parts)].grad for r in per_rank_ref]
                want = sum(g if g is not None else torch.zeros_like(grad) for g in ref)
            else:  # replicated weights saw only this rank's tokens (no data-parallel sum here)
                want = per_rank_ref[rank][1][name].grad
            torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6, msg=f"rank {rank} {name}")
