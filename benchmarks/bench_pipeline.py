"""DualPipe vs 1F1B: simulated bubbles, and optionally real CPU gloo step times.

    python benchmarks/bench_pipeline.py                  # simulator table, instant
    python benchmarks/bench_pipeline.py --real           # + timed gloo runs at P=2 and P=4

The simulator plays the exact op order the executor runs (dsctl/parallel/schedule_sim.py)
with relative costs F, B, W and F&B. "bubble" is the largest per-rank idle time in a
step, "idle %" that bubble over the step's makespan; the paper columns are the
DeepSeek-V3 report's closed forms. The real runs use tiny MLP stages on CPU processes
that share this machine's cores, so their times measure schedule and communication
overhead, not GPU-style overlap. "DualPipe-eagerW" computes weight gradients at the
split backwards instead of at the W ops (the same GEMMs, none held back to fill bubbles).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn

from dsctl.parallel.dualpipe import DualPipe
from dsctl.parallel.launch import spawn_workers
from dsctl.parallel.onef1b import OneF1B
from dsctl.parallel.schedule_sim import OpCosts, compare, paper_bubble


def simulated_table(costs: OpCosts, ranks: tuple[int, ...] = (2, 4, 8)) -> None:
    print(f"costs: F={costs.forward:g} B={costs.backward:g} W={costs.weight:g} F&B={costs.f_and_b:g}")
    print(f"{'P':>3} {'M':>4} | {'1F1B bubble':>11} {'(paper)':>8} {'idle %':>7} | "
          f"{'DualPipe bubble':>15} {'(paper)':>8} {'idle %':>7} | {'step DP/1F1B':>12}")
    for p in ranks:
        for m in (2 * p, 4 * p, 8 * p):
            res = compare(p, m, costs)
            one, dual = res["1F1B"], res["DualPipe"]
            print(f"{p:>3} {m:>4} | {one.bubble:>11.2f} {paper_bubble('1F1B', p, costs):>8.2f} "
                  f"{100 * one.bubble_ratio:>6.1f}% | {dual.bubble:>15.2f} "
                  f"{paper_bubble('DualPipe', p, costs):>8.2f} {100 * dual.bubble_ratio:>6.1f}% | "
                  f"{dual.makespan / one.makespan:>12.3f}")


def _stage(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))


def _time_job(info, width: int, batch: int, num_mb: int, steps: int) -> dict:
    p, rank = info.world_size, info.rank
    stages = [_stage(width, s) for s in range(p)]
    x, y = torch.randn(batch, width), torch.randn(batch, width)
    mirror = _stage(width, p - 1 - rank)
    pipes = {"1F1B": OneF1B(stages[rank], nn.functional.mse_loss),
             "DualPipe": DualPipe((stages[rank], mirror), nn.functional.mse_loss),
             "DualPipe-eagerW": DualPipe((stages[rank], mirror), nn.functional.mse_loss, defer_weight_grad=False)}
    times = {}
    for name, pipe in pipes.items():
        samples = []
        for step in range(steps + 1):  # the first step warms up allocators and connections
            dist.barrier()
            start = time.perf_counter()
            pipe.step(x, y, num_mb)
            dist.barrier()
            if step:
                samples.append(time.perf_counter() - start)
        times[name] = sorted(samples)[len(samples) // 2]
    return times


def real_runs(width: int, batch: int, steps: int) -> None:
    print(f"\nreal CPU gloo runs: MLP stages width {width}, batch {batch}, median of {steps} steps")
    for p in (2, 4):
        num_mb = 2 * p
        times = spawn_workers(_time_job, p, width, batch, num_mb, steps, timeout_s=300)[0]
        base = times["1F1B"]
        print(f"P={p} M={num_mb}: " + ", ".join(
            f"{name} {1e3 * t:.1f} ms/step ({t / base:.2f}x)" for name, t in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forward", type=float, default=1.0)
    parser.add_argument("--backward", type=float, default=2.0)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--overlapped", type=float, default=None, help="F&B cost (default F+B: no overlap gain)")
    parser.add_argument("--real", action="store_true", help="also time real gloo runs (spawns 2 and 4 processes)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    costs = OpCosts(args.forward, args.backward, args.weight, args.overlapped)
    simulated_table(costs)
    if args.overlapped is None:
        print()
        simulated_table(OpCosts(args.forward, args.backward, args.weight,
                                overlapped=0.8 * (args.forward + args.backward)))
    if args.real:
        real_runs(args.width, args.batch, args.steps)


if __name__ == "__main__":
    main()
