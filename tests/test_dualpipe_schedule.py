"""DualPipe / 1F1B schedules as data, and the cost simulator against the paper's formulas."""

from __future__ import annotations

import random

import pytest

from dsctl.parallel.dualpipe import dualpipe_schedule
from dsctl.parallel.onef1b import onef1b_schedule
from dsctl.parallel.schedule import Op, OpKind, PipelineSchedule
from dsctl.parallel.schedule_sim import OpCosts, compare, paper_bubble, render_timeline, simulate


def _costs_under_table_assumption(rng: random.Random) -> OpCosts:
    """Costs under which the report's closed forms are exact: the backward-for-input
    (B - W) takes as long as the forward, and W is no longer than F; F&B anywhere
    between max(F, B) (perfect overlap) and F + B (none)."""
    f = rng.uniform(0.2, 2.0)
    w = rng.uniform(0.05, 1.0) * f
    b = f + w
    return OpCosts(forward=f, backward=b, weight=w, overlapped=rng.uniform(b, f + b))


@pytest.mark.parametrize("num_ranks", [2, 4, 6, 8])
def test_dualpipe_bubble_equals_paper_formula(num_ranks):
    rng = random.Random(num_ranks)
    for num_mb in (2 * num_ranks, 2 * num_ranks + 2, 4 * num_ranks):
        for _ in range(4):
            costs = _costs_under_table_assumption(rng)
            sim = simulate(dualpipe_schedule(num_ranks, num_mb), costs)
            # (PP/2 - 1)(F&B + B - 3W), DeepSeek-V3 report Table 2
            assert sim.bubble == pytest.approx(paper_bubble("DualPipe", num_ranks, costs), abs=1e-9)


@pytest.mark.parametrize("num_ranks", [2, 4, 6, 8])
def test_onef1b_bubble_equals_paper_formula(num_ranks):
    rng = random.Random(100 + num_ranks)
    for num_mb in (num_ranks, 2 * num_ranks + 1, 24):
        costs = OpCosts(forward=rng.uniform(0.5, 2), backward=rng.uniform(0.5, 4), weight=0.3)
        sim = simulate(onef1b_schedule(num_ranks, num_mb), costs)
        assert sim.bubble == pytest.approx((num_ranks - 1) * (costs.forward + costs.backward))
        # every rank of 1F1B idles the same (P-1)(F+B)
        assert max(sim.bubbles()) - min(sim.bubbles()) == pytest.approx(0.0, abs=1e-9)


def test_dualpipe_bubble_is_a_fraction_of_1f1b_and_step_is_shorter():
    for num_ranks in (4, 8):
        res = compare(num_ranks, 2 * num_ranks, OpCosts(overlapped=2.5))
        assert res["DualPipe"].bubble < 0.25 * res["1F1B"].bubble
        assert res["DualPipe"].makespan < res["1F1B"].makespan


def test_overlap_gain_shrinks_dualpipe_step_but_not_1f1b():
    slow, fast = compare(4, 16, OpCosts(overlapped=3.0)), compare(4, 16, OpCosts(overlapped=2.0))
    assert fast["DualPipe"].makespan < slow["DualPipe"].makespan
    assert fast["1F1B"].makespan == slow["1F1B"].makespan


def test_dualpipe_sends_half_the_microbatches_from_each_end():
    sched = dualpipe_schedule(4, 8)
    first_ops = {rank: [op for slot in slots for op in slot if op.kind is OpKind.F] for rank, slots in
                 enumerate(sched.rank_slots)}
    entering_rank0 = {op.microbatch for op in first_ops[0] if op.stage == 0}
    entering_rank3 = {op.microbatch for op in first_ops[3] if op.stage == 0}
    assert entering_rank0 == {0, 1, 2, 3} and entering_rank3 == {4, 5, 6, 7}
    # each rank holds stage i (direction 0) and stage P-1-i (direction 1)
    for rank, ops in first_ops.items():
        assert {(op.direction, op.stage) for op in ops} == {(0, rank), (1, 3 - rank)}


def test_dualpipe_steady_state_runs_overlapped_forward_backward_pairs():
    num_ranks, per_dir = 8, 12
    sched = dualpipe_schedule(num_ranks, 2 * per_dir)
    for rank, slots in enumerate(sched.rank_slots):
        h = min(rank, num_ranks - 1 - rank)
        pairs = [s for s in slots if len(s) == 2]
        expected = 2 * (per_dir - num_ranks + h + 1) + (num_ranks // 2 - h - 1)
        if h == num_ranks // 2 - 1:
            expected -= 1  # the middle ranks run their first steady pair un-overlapped
        assert len(pairs) == expected
        # a pair always couples the two directions: forward of one, backward of the other
        assert all(a.kind is OpKind.F and b.kind is OpKind.B and a.direction != b.direction for a, b in pairs)


def test_dualpipe_splits_backward_only_where_a_weight_op_follows():
    sched = dualpipe_schedule(6, 12)
    sched.validate()  # raises if any split B lacks its W, or any op is missing or doubled
    for slots in sched.rank_slots:
        ops = [op for slot in slots for op in slot]
        assert any(op.kind is OpKind.W for op in ops)
        assert ops[-1].kind is OpKind.W  # the step ends by draining deferred weight gradients


@pytest.mark.parametrize("ranks, mbs", [(3, 12), (4, 6), (4, 9)])
def test_dualpipe_rejects_odd_ranks_and_too_few_microbatches(ranks, mbs):
    with pytest.raises(ValueError, match="DualPipe needs"):
        dualpipe_schedule(ranks, mbs)


def test_simulator_reports_a_deadlocking_schedule():
    sched = PipelineSchedule("crossed", 2, 2, 2, num_directions=2)
    # each rank first waits for a forward the other rank only runs afterwards
    sched.rank_slots = [
        [(Op(OpKind.F, 1, 1, 1),), (Op(OpKind.F, 0, 0, 0),), (Op(OpKind.B, 1, 1, 1),), (Op(OpKind.B, 0, 0, 0),)],
        [(Op(OpKind.F, 0, 1, 0),), (Op(OpKind.F, 1, 0, 1),), (Op(OpKind.B, 0, 1, 0),), (Op(OpKind.B, 1, 0, 1),)],
    ]
    with pytest.raises(RuntimeError, match="deadlocks"):
        simulate(sched)


def test_timeline_rendering_has_one_row_per_rank_of_makespan_width():
    sim = simulate(dualpipe_schedule(4, 8), OpCosts())
    rows = render_timeline(sim).splitlines()
    assert len(rows) == 4
    assert all(len(row.split(": ")[1]) == sim.makespan for row in rows)
