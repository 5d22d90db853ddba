"""Per-rank memory and step time of every parallel mode, against one process, on this machine.

    python benchmarks/bench_parallel.py                       # 100m preset, 2 and 4 processes
    python benchmarks/bench_parallel.py --procs 2 --steps 3   # quicker

Every run is a real `dsctl run` of the same pretrain stage (source → tokenize → pretrain,
the first two shared through the store) with the same global batch: one process with
grad_accum G; data parallel and expert parallel with G/N per rank; 1F1B and DualPipe with
G micro-batches through the pipeline. For each run it prints parameters and peak resident
memory per rank (`params_per_rank`, `peak_rss_mb_per_rank` from the run's summary; the
single process's from its own rusage), seconds per step (steps 2.., from the metrics), and
for the pipelines each rank's measured idle time as a share of the step beside the
simulator's bubble share for the same schedule (dsctl/parallel/schedule_sim.py, F=1, B=2,
W=1). The processes share this machine's cores: with more ranks than cores, step times
measure contention as much as the schedule. Resident memory includes the ~0.3 GB every
torch process costs before it holds a parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = """
[recipe]
name = "{name}"
seed = 0

[stages.source]
task_problems_per_family = 200
max_prose_docs = 200

[stages.tokenize]
from = "source"
vocab_size = 2000

[stages.pretrain]
from = "tokenize"
{pretrain}
"""


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def run(workdir: Path, name: str, config: dict) -> dict:
    """`dsctl run` one recipe; returns the pretrain artifact's summary and metrics rows."""
    recipe = workdir / f"{name}.toml"
    pretrain = "\n".join(f"{k} = {_toml_value(v)}" for k, v in config.items())
    recipe.write_text(RECIPE.format(name=name, pretrain=pretrain))
    env = {**os.environ, "DSCTL_WORKDIR": str(workdir / "store")}
    done = subprocess.run([sys.executable, "-m", "dsctl.cli", "--quiet", "run", str(recipe)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    ref = json.loads((workdir / "store" / "refs" / name / "pretrain.json").read_text())
    artifact = workdir / "store" / "objects" / ref["key"]
    manifest = json.loads((artifact / "manifest.json").read_text())
    rows = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    return {"summary": manifest["metrics"], "rows": rows}


def seconds_per_step(rows: list[dict], batch_tokens: int) -> float:
    later = [r for r in rows if r["step"] >= 2] or rows
    return sum(batch_tokens / r["tokens_per_s"] for r in later) / len(later)


def simulated_idle(schedule: str, ranks: int, microbatches: int) -> list[float]:
    from dsctl.parallel.dualpipe import dualpipe_schedule
    from dsctl.parallel.onef1b import onef1b_schedule
    from dsctl.parallel.schedule_sim import simulate

    build = dualpipe_schedule if schedule == "dualpipe" else onef1b_schedule
    result = simulate(build(ranks, microbatches))
    return [b / result.makespan for b in result.bubbles()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", default="100m")
    parser.add_argument("--grad-accum", type=int, default=8, help="micro-batches per step in all (>= 2 × procs)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)

    base = dict(model=args.model, mtp_depth=1, doc_masking=True, precision="fp32", lr=1e-3, batch_size=2,
                seq_len=64, warmup_steps=1, max_steps=args.steps, eval_every=0, eval_batches=1,
                checkpoint_every=args.steps, threads=1)
    G = args.grad_accum
    batch_tokens = G * base["batch_size"] * base["seq_len"]
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        workdir = Path(tmp)
        one = run(workdir, "single", dict(base, grad_accum=G))
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        one["summary"]["peak_rss_mb_per_rank"] = [round(peak_rss_mb, 1)]
        one["summary"]["params_per_rank"] = [one["summary"]["params"]]
        runs["1 process"] = one
        for P in args.procs:
            modes = {
                f"data parallel ×{P}": dict(base, nproc=P, grad_accum=G // P),
                f"expert parallel E={P}": dict(base, nproc=P, expert_parallel=P, grad_accum=G // P),
                f"1F1B P={P}": dict(base, nproc=P, pipeline="1f1b", grad_accum=G),
                f"DualPipe P={P}": dict(base, nproc=P, pipeline="dualpipe", grad_accum=G),
            }
            for label, config in modes.items():
                name = label.split()[0].lower().replace("×", "") + str(P)
                runs[label] = run(workdir, name, config) | {"config": config}

    first_loss = runs["1 process"]["rows"]
    print(f"model {args.model}: {runs['1 process']['summary']['params'] / 1e6:.1f}M parameters; "
          f"{batch_tokens} tokens per step ({G} micro-batches of {base['batch_size']}×{base['seq_len']}); "
          f"{os.cpu_count()} CPU cores\n")
    print("| run | params per rank (M) | peak RSS per rank (MB) | s/step | vs 1 process | max rel. loss gap |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    single_step = seconds_per_step(first_loss, batch_tokens)
    for label, res in runs.items():
        s = res["summary"]
        step = seconds_per_step(res["rows"], batch_tokens)
        gap = max(abs(r["loss"] - o["loss"]) / abs(o["loss"]) for r, o in zip(res["rows"], first_loss))
        params = " / ".join(f"{p / 1e6:.1f}" for p in s["params_per_rank"])
        rss = " / ".join(f"{m:.0f}" for m in s["peak_rss_mb_per_rank"])
        print(f"| {label} | {params} | {rss} | {step:.2f} | {step / single_step:.2f}× | {gap:.1e} |")
    print("\nPipeline idle per rank, measured (share of the step) beside the simulator's bubble share:\n")
    print("| run | measured idle | simulated bubble |")
    print("| --- | --- | --- |")
    for label, res in runs.items():
        if "idle_s_per_rank" not in res["summary"]:
            continue
        cfg = res["config"]
        step = seconds_per_step(res["rows"], batch_tokens)
        measured = [i / (args.steps * step) for i in res["summary"]["idle_s_per_rank"]]
        simulated = simulated_idle(cfg["pipeline"], cfg["nproc"], cfg["grad_accum"])
        print(f"| {label} | {' / '.join(f'{m:.0%}' for m in measured)} | {' / '.join(f'{x:.0%}' for x in simulated)} |")
    if args.json:
        args.json.write_text(json.dumps({k: v["summary"] | {"s_per_step": seconds_per_step(v["rows"], batch_tokens)}
                                         for k, v in runs.items()}, indent=2))


if __name__ == "__main__":
    main()
