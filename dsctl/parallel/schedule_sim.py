"""Cost simulator for pipeline schedules: per-rank timelines and bubbles.

Given a :class:`~dsctl.parallel.schedule.PipelineSchedule` and relative op costs, it
plays the schedule as the processes would run it: each rank executes its slots in order,
a slot starts when the rank is free and every input it needs has arrived (a forward
needs the previous stage's forward, a backward the next stage's backward). The *bubble*
of a rank is the time it sits idle between the step's start and the step's end.

    python -m dsctl.parallel.schedule_sim --ranks 4 --microbatches 8 --timeline

The DeepSeek-V3 report (Table 2) gives closed forms, checked by
``tests/test_dualpipe_schedule.py``:

    1F1B      (P - 1)(F + B)
    DualPipe  (P/2 - 1)(F&B + B - 3W)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from dsctl.parallel.schedule import Op, OpKind, PipelineSchedule, Slot

_Key = tuple[OpKind, int, int, int]  # (kind, direction, stage, microbatch); B covers split b


@dataclass(frozen=True)
class OpCosts:
    """Relative execution times of pipeline ops (any unit; only ratios matter)."""

    forward: float = 1.0
    """F: forward of one micro-batch through one stage."""
    backward: float = 2.0
    """B: full backward (input + weight gradients) of one stage; about twice the forward."""
    weight: float = 1.0
    """W: the weight-gradient part of B, deferred when a backward is split (0 < W < B)."""
    overlapped: float | None = None
    """F&B: one forward and one backward run overlapped; None means no gain (F + B)."""
    comm: float = 0.0
    """Latency of one point-to-point transfer; 0 assumes communication fully hidden."""

    @property
    def f_and_b(self) -> float:
        return self.forward + self.backward if self.overlapped is None else self.overlapped

    def slot_time(self, slot: Slot) -> float:
        def one(op: Op) -> float:
            if op.kind is OpKind.F:
                return self.forward
            if op.kind is OpKind.W:
                return self.weight
            return self.backward - self.weight if op.split else self.backward

        if len(slot) == 1:
            return one(slot[0])
        kinds = sorted(op.kind.value for op in slot)
        if kinds != ["B", "F"]:
            raise ValueError(f"an overlapped slot must pair one F with one B, got {slot}")
        split_saving = sum(self.weight for op in slot if op.kind is OpKind.B and op.split)
        return self.f_and_b - split_saving


@dataclass
class SimResult:
    """Timeline and bubble of one simulated step."""

    schedule: PipelineSchedule
    costs: OpCosts
    intervals: list[list[tuple[float, float, Slot]]] = field(default_factory=list)
    """Per rank: (start, end, slot) in execution order."""
    makespan: float = 0.0
    """Time from the step's start to the last op's end."""

    def busy(self, rank: int) -> float:
        return sum(end - start for start, end, _ in self.intervals[rank])

    def bubbles(self) -> list[float]:
        """Idle time of each rank during the step."""
        return [self.makespan - self.busy(r) for r in range(self.schedule.num_ranks)]

    @property
    def bubble(self) -> float:
        """The largest idle time of any rank (the step waits for the slowest)."""
        return max(self.bubbles())

    @property
    def bubble_ratio(self) -> float:
        return self.bubble / self.makespan


def _dependencies(schedule: PipelineSchedule, op: Op) -> list[tuple[_Key, int]]:
    """(event that must have finished, rank it happened on) for ``op`` to start."""
    d, s, mb = op.direction, op.stage, op.microbatch
    if op.kind is OpKind.F:
        return [((OpKind.F, d, s - 1, mb), schedule.rank_of(d, s - 1))] if s > 0 else []
    if op.kind is OpKind.W:
        return [((OpKind.B, d, s, mb), schedule.rank_of(d, s))]
    deps = [((OpKind.F, d, s, mb), schedule.rank_of(d, s))]
    if s < schedule.num_stages - 1:
        deps.append(((OpKind.B, d, s + 1, mb), schedule.rank_of(d, s + 1)))
    return deps


def simulate(schedule: PipelineSchedule, costs: OpCosts = OpCosts()) -> SimResult:
    """Play ``schedule`` under ``costs``; raises ``RuntimeError`` if it would deadlock."""
    result = SimResult(schedule, costs, intervals=[[] for _ in range(schedule.num_ranks)])
    finished: dict[_Key, float] = {}
    next_slot = [0] * schedule.num_ranks
    free_at = [0.0] * schedule.num_ranks
    remaining = sum(len(s) for s in schedule.rank_slots)
    while remaining:
        progressed = False
        for rank, slots in enumerate(schedule.rank_slots):
            while next_slot[rank] < len(slots):
                slot = slots[next_slot[rank]]
                deps = [dep for op in slot for dep in _dependencies(schedule, op)]
                if any(key not in finished for key, _ in deps):
                    break
                ready = [finished[k] + (costs.comm if src != rank else 0.0) for k, src in deps]
                start = max([free_at[rank], *ready])
                end = start + costs.slot_time(slot)
                for op in slot:
                    finished[(op.kind, op.direction, op.stage, op.microbatch)] = end
                result.intervals[rank].append((start, end, slot))
                free_at[rank] = end
                next_slot[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {r: str(schedule.rank_slots[r][next_slot[r]]) for r in range(schedule.num_ranks)
                     if next_slot[r] < len(schedule.rank_slots[r])}
            raise RuntimeError(f"{schedule.name} deadlocks: every rank waits, next slots {stuck}")
    result.makespan = max(free_at)
    return result


def paper_bubble(name: str, num_ranks: int, costs: OpCosts) -> float:
    """Bubble from the DeepSeek-V3 report's Table 2 for ``name`` in 1F1B / ZB1P / DualPipe."""
    f, b, w = costs.forward, costs.backward, costs.weight
    if name == "1F1B":
        return (num_ranks - 1) * (f + b)
    if name == "ZB1P":
        return (num_ranks - 1) * (f + b - 2 * w)
    if name == "DualPipe":
        return (num_ranks / 2 - 1) * (costs.f_and_b + b - 3 * w)
    raise ValueError(f"no closed form for schedule {name!r}; known: 1F1B, ZB1P, DualPipe")


def _cell(slot: Slot, offset: int, width: int) -> str:
    if len(slot) == 2:  # overlapped pair drawn as <==>
        return "X" if width == 1 else "<" if offset == 0 else ">" if offset == width - 1 else "="
    op = slot[0]
    if op.kind is OpKind.F:
        return str(op.microbatch % 10)  # forward: the micro-batch id
    return "b" if op.kind is OpKind.B and op.split else op.kind.value


def render_timeline(result: SimResult, unit: float | None = None) -> str:
    """ASCII picture, one character per ``unit`` of time (default: the forward cost):
    a digit is a forward of that micro-batch, ``B`` a full backward, ``b`` a backward
    for input, ``W`` a backward for weights, ``<=>`` an overlapped F&B pair, ``.`` idle."""
    unit = unit or result.costs.forward
    width = round(result.makespan / unit)
    lines = []
    for rank, intervals in enumerate(result.intervals):
        row = ["."] * width
        for start, end, slot in intervals:
            first, last = round(start / unit), round(end / unit)
            for t in range(first, last):
                row[t] = _cell(slot, t - first, last - first)
        lines.append(f"rank {rank}: " + "".join(row))
    return "\n".join(lines)


def compare(num_ranks: int, num_microbatches: int, costs: OpCosts) -> dict[str, SimResult]:
    """Simulate 1F1B and DualPipe on the same ranks, micro-batches and costs."""
    from dsctl.parallel.dualpipe import dualpipe_schedule
    from dsctl.parallel.onef1b import onef1b_schedule

    return {
        "1F1B": simulate(onef1b_schedule(num_ranks, num_microbatches), costs),
        "DualPipe": simulate(dualpipe_schedule(num_ranks, num_microbatches), costs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--forward", type=float, default=OpCosts.forward)
    parser.add_argument("--backward", type=float, default=OpCosts.backward)
    parser.add_argument("--weight", type=float, default=OpCosts.weight)
    parser.add_argument("--overlapped", type=float, default=None, help="F&B cost (default F+B)")
    parser.add_argument("--timeline", action="store_true", help="print the ASCII timelines")
    args = parser.parse_args(argv)
    costs = OpCosts(args.forward, args.backward, args.weight, args.overlapped)
    for name, res in compare(args.ranks, args.microbatches, costs).items():
        print(f"{name:9s} P={args.ranks} M={args.microbatches}: makespan {res.makespan:g}, "
              f"bubble {res.bubble:g} (paper {paper_bubble(name, args.ranks, costs):g}), "
              f"bubble/makespan {res.bubble_ratio:.3f}")
        if args.timeline:
            print(render_timeline(res))


if __name__ == "__main__":
    main()
