"""DualPipe and 1F1B on real gloo processes match a single-process run exactly.

One 4-process job (spawned once per module, it is the slow part) runs every case:
P=4 on the whole world and P=2 on a subgroup of ranks 0 and 1. Each case returns the
loss and every stage's gradients, and the tests compare them with a single process
running the same stages over the same micro-batches (fp32, tight tolerance).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.parallel.data_parallel import all_reduce_grads
from dsctl.parallel.dist import pipeline_data_groups
from dsctl.parallel.dualpipe import DualPipe, dualpipe_schedule
from dsctl.parallel.launch import spawn_workers
from dsctl.parallel.onef1b import OneF1B
from dsctl.parallel.pipeline_stages import split_deepseek_v3, stage_kwargs
from dsctl.parallel.schedule import OpKind
from dsctl.parallel.weight_grad import DeferrableLinear

WIDTH, VOCAB, SEQ = 8, 11, 3


def build_stages(kind: str, num_stages: int, seed: int = 0) -> list[nn.Module]:
    """The same stages in every process: tiny MLPs, or an embedding..head token model."""
    torch.manual_seed(seed)
    stages: list[nn.Module] = []
    for s in range(num_stages):
        layers: list[nn.Module] = []
        if kind == "lm" and s == 0:
            layers.append(nn.Embedding(VOCAB, WIDTH))
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
        if kind == "lm" and s == num_stages - 1:
            layers.append(nn.Linear(WIDTH, VOCAB))
        stages.append(nn.Sequential(*layers))
    return stages


def make_batch(kind: str, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "lm":
        return torch.randint(0, VOCAB, (batch, SEQ), generator=g), torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    return torch.randn(batch, WIDTH, generator=g), torch.randn(batch, WIDTH, generator=g)


def loss_fn_for(kind: str):
    if kind == "lm":
        return lambda logits, y: nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    return nn.functional.mse_loss


def reference(kind: str, num_stages: int, batch: int, num_mb: int, only_mbs: range | None = None,
              shift: list[float] | None = None) -> dict:
    """Single process: all stages in sequence, micro-batch losses averaged, grads accumulated
    (``shift[mb]``: added to every stage's output, as OverlapHookStage does)."""
    stages = build_stages(kind, num_stages)
    x, y = make_batch(kind, batch)
    losses = []
    for mb, (xm, ym) in enumerate(zip(x.tensor_split(num_mb), y.tensor_split(num_mb))):
        h = xm
        for stage in stages:
            h = stage(h) + (shift[mb] if shift else 0.0)
        loss = loss_fn_for(kind)(h, ym)
        losses.append(loss.detach())
        if only_mbs is None or mb in only_mbs:
            (loss / num_mb).backward()
    return {"loss": torch.stack(losses).mean(), "grads": [[p.grad.clone() for p in s.parameters()] for s in stages]}


def _run_case(schedule: str, kind: str, num_ranks: int, batch: int, num_mb: int, group, sync: bool = True,
              defer: bool = True) -> dict:
    rank = dist.get_rank(group)
    stages = build_stages(kind, num_ranks)
    x, y = make_batch(kind, batch)
    if schedule == "dualpipe":
        mine = {rank: stages[rank], num_ranks - 1 - rank: stages[num_ranks - 1 - rank]}
        pipe = DualPipe((stages[rank], stages[num_ranks - 1 - rank]), loss_fn_for(kind), group,
                        sync_mirror_grads=sync, defer_weight_grad=defer)
    else:
        mine = {rank: stages[rank]}
        pipe = OneF1B(stages[rank], loss_fn_for(kind), group)
    loss = pipe.step(x, y, num_mb)
    return {"loss": loss, "grads": {s: [p.grad.clone() for p in m.parameters()] for s, m in mine.items()}}


def tiny_deepseek() -> DeepSeekV3:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", num_hidden_layers=2, seq_aux_loss_alpha=0.1, num_nextn_predict_layers=0)
    return DeepSeekV3(cfg).train()


def lm_batch(batch: int = 4, seq: int = 6) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, seq), generator=torch.Generator().manual_seed(5))


def _run_deepseek_case(group) -> dict:
    rank = dist.get_rank(group)
    model = tiny_deepseek()
    stages = split_deepseek_v3(model, 2)
    ids = lm_batch()
    loss = DualPipe((stages[rank], stages[1 - rank]), None, group).step(ids, None, 4, stage_kwargs(ids, ids, None, 4))
    return {"loss": loss, "grads": {name: p.grad.clone() for name, p in model.named_parameters()
                                    if p.grad is not None}}


def _run_dp_x_pp_case() -> dict:
    """2 replicas x DualPipe over 2 ranks: each replica trains on its half of the batch."""
    groups = pipeline_data_groups(2)
    stages = build_stages("mlp", 2)
    x, y = make_batch("mlp", 16)
    mine = slice(groups.dp_rank * 8, (groups.dp_rank + 1) * 8)
    chunks = (stages[groups.pp_rank], stages[1 - groups.pp_rank])
    loss = DualPipe(chunks, nn.functional.mse_loss, groups.pp, groups.links).step(x[mine], y[mine], 4)
    for chunk in chunks:
        all_reduce_grads(chunk, groups.dp)
    return {"pp_rank": groups.pp_rank, "dp_rank": groups.dp_rank, "loss": loss,
            "grads": {s: [p.grad.clone() for p in stages[s].parameters()] for s in (0, 1)}}


class OverlapHookStage(nn.Sequential):
    """A stage whose class takes over DualPipe's paired slots (and takes a per-micro-batch
    ``shift``): it records (forward stage, backward stage) of every pair it is given."""

    pairs: list[tuple[int, int]] = []

    def __init__(self, stage_index: int, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.stage_index = stage_index

    def forward(self, x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        return super().forward(x) + shift

    @classmethod
    def overlapped_forward_backward(cls, forward_chunk, forward_input, forward_kwargs, backward_chunk,
                                    backward_output, backward_grad) -> torch.Tensor:
        cls.pairs.append((forward_chunk.stage_index, backward_chunk.stage_index))
        out = forward_chunk(forward_input, **forward_kwargs)
        torch.autograd.backward(backward_output, backward_grad)
        return out


def shifts(num_mb: int) -> list[float]:
    return [0.1 * mb for mb in range(num_mb)]


def _run_overlap_hook_case(num_ranks: int, batch: int, num_mb: int) -> dict:
    rank = dist.get_rank()
    stages = [OverlapHookStage(s, *stage) for s, stage in enumerate(build_stages("mlp", num_ranks))]
    x, y = make_batch("mlp", batch)
    chunks = (stages[rank], stages[num_ranks - 1 - rank])
    OverlapHookStage.pairs = []
    loss = DualPipe(chunks, nn.functional.mse_loss).step(x, y, num_mb, [{"shift": s} for s in shifts(num_mb)])
    return {"loss": loss, "pairs": OverlapHookStage.pairs,
            "deferrable": all(type(m) is DeferrableLinear for c in chunks for m in c if isinstance(m, nn.Linear)),
            "grads": {s: [p.grad.clone() for p in stages[s].parameters()] for s in {rank, num_ranks - 1 - rank}}}


def _pipeline_job(info) -> dict:
    world = dist.group.WORLD
    pair = dist.new_group([0, 1])  # every rank must take part in creating a group
    results = {
        "dualpipe_p4": _run_case("dualpipe", "mlp", 4, 16, 8, world),
        "dualpipe_p4_lm": _run_case("dualpipe", "lm", 4, 8, 8, world),
        "dualpipe_p4_nosync": _run_case("dualpipe", "mlp", 4, 16, 8, world, sync=False),
        "dualpipe_p4_eager_w": _run_case("dualpipe", "mlp", 4, 16, 8, world, defer=False),
        "onef1b_p4": _run_case("onef1b", "mlp", 4, 12, 6, world),
        "dp_x_pp": _run_dp_x_pp_case(),
        "overlap_hook_p4": _run_overlap_hook_case(4, 16, 8),
    }
    if info.rank < 2:
        results["dualpipe_p2"] = _run_case("dualpipe", "mlp", 2, 12, 6, pair)
        results["onef1b_p2"] = _run_case("onef1b", "lm", 2, 6, 3, pair)
        results["deepseek_p2"] = _run_deepseek_case(pair)
    dist.barrier()
    return results


@pytest.fixture(scope="module")
def job() -> list[dict]:
    return spawn_workers(_pipeline_job, 4, timeout_s=150)


def _assert_matches(per_rank: list[dict], ref: dict, loss_ranks: list[int]) -> None:
    for rank, res in enumerate(per_rank):
        if rank in loss_ranks:
            torch.testing.assert_close(res["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
        else:
            assert res["loss"] is None
        for stage, grads in res["grads"].items():
            for got, want in zip(grads, ref["grads"][stage], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"rank {rank} stage {stage}")


def test_dualpipe_four_ranks_matches_single_process(job):
    _assert_matches([r["dualpipe_p4"] for r in job], reference("mlp", 4, 16, 8), loss_ranks=[0, 3])


def test_dualpipe_chunk_class_hook_runs_exactly_the_paired_slots_and_matches_single_process(job):
    schedule = dualpipe_schedule(4, 8)
    for rank, res in enumerate(r["overlap_hook_p4"] for r in job):
        paired = [slot for slot in schedule.rank_slots[rank] if len(slot) == 2]
        assert paired and all((f.kind, b.kind) == (OpKind.F, OpKind.B) for f, b in paired)
        assert res["pairs"] == [(f.stage, b.stage) for f, b in paired]
        assert res["deferrable"]  # DualPipe made the chunks' Linears defer their weight GEMMs
    _assert_matches([r["overlap_hook_p4"] for r in job], reference("mlp", 4, 16, 8, shift=shifts(8)),
                    loss_ranks=[0, 3])


def test_dualpipe_with_weight_grads_at_backward_time_matches_single_process(job):
    _assert_matches([r["dualpipe_p4_eager_w"] for r in job], reference("mlp", 4, 16, 8), loss_ranks=[0, 3])


def test_dualpipe_token_model_with_embedding_first_and_head_last(job):
    _assert_matches([r["dualpipe_p4_lm"] for r in job], reference("lm", 4, 8, 8), loss_ranks=[0, 3])


def test_dualpipe_two_ranks_matches_single_process(job):
    _assert_matches([r["dualpipe_p2"] for r in job[:2]], reference("mlp", 2, 12, 6), loss_ranks=[0, 1])


def test_dualpipe_routes_each_half_of_the_batch_through_its_own_direction(job):
    # Without the mirror gradient sum, the direction-0 copy of every stage (chunk 0 on
    # rank s) has seen exactly the first half of the micro-batches, the other copy the rest.
    first, second = reference("mlp", 4, 16, 8, range(0, 4)), reference("mlp", 4, 16, 8, range(4, 8))
    for rank, res in enumerate(r["dualpipe_p4_nosync"] for r in job):
        for stage, grads in res["grads"].items():
            want = first if stage == rank else second
            for got, w in zip(grads, want["grads"][stage], strict=True):
                torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)


def test_data_parallel_replicas_of_dualpipe_match_single_process_on_whole_batch(job):
    ref = reference("mlp", 2, 16, 8)  # replica d's 4 micro-batches are micro-batches 4d..4d+3
    assert [(r["dp_x_pp"]["dp_rank"], r["dp_x_pp"]["pp_rank"]) for r in job] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for res in (r["dp_x_pp"] for r in job):
        for stage, grads in res["grads"].items():
            for got, want in zip(grads, ref["grads"][stage], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_onef1b_four_ranks_matches_single_process(job):
    _assert_matches([r["onef1b_p4"] for r in job], reference("mlp", 4, 12, 6), loss_ranks=[3])


def test_onef1b_two_ranks_token_model_matches_single_process(job):
    _assert_matches([r["onef1b_p2"] for r in job[:2]], reference("lm", 2, 6, 3), loss_ranks=[1])


def test_dualpipe_runs_deepseek_v3_stages_like_compute_loss(job):
    model = tiny_deepseek()
    ids = lm_batch()
    lm_losses, losses = [], []
    for mb in ids.tensor_split(4):
        out = compute_loss(model, mb, mtp_weight=0.0)
        (out.loss / 4).backward()
        lm_losses.append(out.lm_loss.detach())
        losses.append(out.loss.detach())
    for rank in (0, 1):
        res = job[rank]["deepseek_p2"]
        # the last stage's loss holds the LM loss and its own layers' balance term; the
        # first stage's balance term enters the gradients only
        assert torch.stack(lm_losses).mean() - 1e-6 <= res["loss"] <= torch.stack(losses).mean() + 1e-6
        # both ranks hold every parameter (stage i and the mirror copy of stage 1-i); an
        # expert no token chose has a zero gradient there and none in the reference
        assert res["grads"].keys() >= {n for n, p in model.named_parameters() if p.grad is not None}
        for name, p in model.named_parameters():
            want = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(res["grads"][name], want, rtol=1e-4, atol=1e-6, msg=name)
