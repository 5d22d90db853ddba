"""Time and peak memory of each stage of a recipe on one GPU, before (or after) running it.

    python benchmarks/estimate_recipe.py recipes/gpu_r1.toml                  # from FLOPs
    python benchmarks/estimate_recipe.py recipes/gpu_r1.toml --measured DIR   # from a reduced run

From FLOPs (the default): training stages take tokens × `train_flops_per_token` at
`--mfu` of `--peak-tflops` (dsctl/train/budget.py counts the FLOPs; torch's FlopCounter
agrees within 15%, tests/test_budget.py); decoding (grpo rollouts, rejection sampling,
eval) is launch-bound at this size, so a decode step costs `--decode-ms-per-layer` per
layer, or its FLOPs at the same MFU when that is more; peak memory is the training-step
estimate of `train_memory` on CUDA. The data chain runs on CPUs: it is scaled from a
measured rate (`--data-problems-per-s`, worked problems a second through source →
tokenize with the world's prose alongside: 3,100 on this project's 2-core machine for
gpu_r1's data at 40,000 problems, 12.8 s; the default assumes a GPU host's 16 cores
give 4× that, source being one process).

From a reduced run (`--measured WORKDIR`, what benchmarks/gpu_check.sh writes): each
stage's measured seconds, scaled by the ratio of its work in the recipe to its work in
that run (steps for training, problems × samples for decoding). Fixed costs (loading,
held-out checks) scale too, so these are upper estimates.

Every figure is an estimate; the assumptions print with the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsctl.pipeline.recipe import load_recipe  # noqa: E402
from dsctl.pipeline.runner import StagePlan, plan  # noqa: E402
from dsctl.pipeline.stage import StageRegistry  # noqa: E402
from dsctl.train.budget import GIB, train_flops_per_token, train_memory  # noqa: E402

#: Tokens of a chat-formatted task prompt (template + question), for rollouts and eval.
PROMPT_TOKENS = 32


@dataclass
class Row:
    stage: str
    work: str
    seconds: float
    memory: float | None  # bytes; None = decoding only (weights + a small latent cache)


def _model(plans: dict[str, StagePlan]):
    from stages.pretrain import model_config

    pretrain = next(p for p in plans.values() if p.spec.name == "pretrain")
    tokenize = next((p for p in plans.values() if p.spec.name == "tokenize"), None)
    return pretrain, model_config(pretrain.config, tokenize.config.vocab_size if tokenize else None)


DATA_STAGES = ("clean", "dedup", "decontaminate", "audit", "tokenize")


def _units(p: StagePlan, plans: dict[str, StagePlan]) -> float:
    """How much work a stage's config asks for, in units its time grows with (a data
    stage's grows with the corpus its source writes)."""
    c = p.config
    kind = p.spec.name
    if kind in DATA_STAGES:
        sources = [q for q in plans.values() if q.spec.name == "source"]
        return sum(_units(q, plans) for q in sources) or 1.0
    if kind in ("pretrain", "extend", "sft", "distill", "grpo"):
        return c.max_steps
    if kind == "rejection_sample":
        return c.train_problems * c.samples_per_prompt
    if kind == "eval":
        return c.eval_problems * (c.samples + 1) * len(p.upstream.get("checkpoint", []))
    if kind == "source":
        return c.task_problems_per_family * len(c.families) + c.max_prose_docs
    return 1.0


def from_flops(plans: dict[str, StagePlan], args) -> list[Row]:
    pretrain, model = _model(plans)
    rate = args.peak_tflops * 1e12 * args.mfu
    _, active = model.num_parameters()

    def train(cfg_model, steps, batch, seq_len):
        tokens = steps * batch * seq_len
        return tokens, tokens * train_flops_per_token(cfg_model, seq_len) / rate

    def decode(rows, new_tokens, batch_rows, cfg_model=model):
        n_layers = cfg_model.num_hidden_layers
        batches = -(-rows // batch_rows)
        per_step = max(args.decode_ms_per_layer * 1e-3 * n_layers, 2 * active * batch_rows / rate)
        return batches * (PROMPT_TOKENS + new_tokens) * per_step

    rows: list[Row] = []
    for name, p in plans.items():
        c, kind = p.config, p.spec.name
        if kind == "source":
            problems = c.task_problems_per_family * len(c.families)
            rows.append(Row("data chain", f"{problems:,} worked problems + the world's prose, source → tokenize",
                            problems / args.data_problems_per_s, None))
        elif kind in DATA_STAGES:
            continue  # counted in source's row: the rate is the whole chain's
        elif kind in ("pretrain", "sft"):
            tokens, seconds = train(model, c.max_steps, c.batch_size * c.grad_accum, c.seq_len)
            mem = train_memory(model, c.batch_size, c.seq_len, c.precision, "cuda").total
            work = f"{c.max_steps:,} × {c.batch_size * c.grad_accum} × {c.seq_len} = {tokens / 1e6:.1f}M tokens"
            rows.append(Row(name, work, seconds, mem))
        elif kind == "extend":
            seq_len = c.seq_len or int(pretrain.config.seq_len * c.factor)
            tokens, seconds = train(model, c.max_steps, c.batch_size * c.grad_accum, seq_len)
            mem = train_memory(replace(model, max_position_embeddings=max(seq_len, model.max_position_embeddings)),
                               c.batch_size, seq_len, c.precision, "cuda").total
            work = f"{c.max_steps:,} × {c.batch_size * c.grad_accum} × {seq_len} = {tokens / 1e6:.1f}M tokens"
            rows.append(Row(name, work, seconds, mem))
        elif kind == "distill":
            student = replace(model, num_hidden_layers=len(c.student_layers) or model.num_hidden_layers,
                              num_nextn_predict_layers=c.student_overrides.get("num_nextn_predict_layers", 0))
            tokens, seconds = train(student, c.max_steps, c.batch_size * c.grad_accum, c.seq_len)
            seconds += tokens * train_flops_per_token(model, c.seq_len) / 3 / rate  # the teacher's forward
            teacher_bytes = 4 * model.num_parameters()[0]
            mem = train_memory(student, c.batch_size, c.seq_len, c.precision, "cuda").total + teacher_bytes
            s_total, t_total = student.num_parameters()[0], model.num_parameters()[0]
            work = f"{tokens / 1e6:.1f}M tokens; student {s_total / 1e6:.1f}M = {s_total / t_total:.0%} of the teacher"
            rows.append(Row(name, work, seconds, mem))
        elif kind == "grpo":
            group_rows = c.prompts_per_step * c.group_size
            seq = PROMPT_TOKENS + c.max_new_tokens
            rollout = decode(group_rows, c.max_new_tokens, group_rows)
            tokens = group_rows * seq * c.update_epochs
            # one fwd+bwd per update epoch plus the old policy's forward (a third of one)
            update = (tokens + group_rows * seq / 3) * train_flops_per_token(model, seq) / rate
            mem = train_memory(model, c.batch_size, seq, c.precision, "cuda").total + 4 * model.num_parameters()[0]
            rows.append(Row(name, f"{c.max_steps} steps × {c.prompts_per_step} prompts × {c.group_size} samples",
                            c.max_steps * (rollout + update), mem))
        elif kind == "rejection_sample":
            total_rows = c.train_problems * c.samples_per_prompt
            rows.append(Row(name, f"{c.train_problems:,} prompts × {c.samples_per_prompt} samples",
                            decode(total_rows, c.max_new_tokens, c.prompts_per_chunk * c.samples_per_prompt), None))
        elif kind == "eval":
            n_ckpt = len(p.upstream.get("checkpoint", []))
            per = decode(c.eval_problems * (c.samples + 1), c.max_new_tokens, c.batch_size)
            work = f"{n_ckpt} checkpoints × {c.eval_problems:,} × (1 + {c.samples})"
            rows.append(Row(name, work, n_ckpt * per, None))
    return rows


def from_run(plans: dict[str, StagePlan], recipe_name: str, workdir: Path) -> list[Row]:
    manifests = {}
    for name in plans:
        ref = workdir / "refs" / recipe_name / f"{name}.json"
        if ref.is_file():
            key = json.loads(ref.read_text())["key"]
            manifests[name] = json.loads((workdir / "objects" / key / "manifest.json").read_text())
    ran = {name: replace(p, config=type(p.config)(**manifests[name]["config"])) if name in manifests else p
           for name, p in plans.items()}
    rows = []
    for name, m in manifests.items():
        scale = _units(plans[name], plans) / max(_units(ran[name], ran), 1e-9)
        rows.append(Row(name, f"measured {m['seconds']:.1f} s × {scale:.1f}", m["seconds"] * scale, None))
    return rows


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="STAGE.KEY=VALUE, as dsctl run takes")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.15, help="share of the peak training reaches")
    parser.add_argument("--decode-ms-per-layer", type=float, default=0.25,
                        help="launch-bound cost of one decode step per layer (MLA + routed experts)")
    parser.add_argument("--data-problems-per-s", type=float, default=12_400.0,
                        help="worked problems a second through source → tokenize on the GPU host's CPUs")
    parser.add_argument("--measured", type=Path, help="work directory of a reduced run of the recipe")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.overrides)
    plans = plan(recipe, StageRegistry.discover())
    rows = from_run(plans, recipe.name, args.measured) if args.measured else from_flops(plans, args)
    _, model = _model(plans)
    total, active = model.num_parameters()
    if args.measured:
        basis = f"measured on {args.measured}"
    else:
        basis = (f"{args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s, "
                 f"decode {args.decode_ms_per_layer} ms/layer/step")
    print(f"{recipe.name}: model {total / 1e6:.1f}M parameters ({active / 1e6:.1f}M active), {basis}")
    print(f"{'stage':<18} {'work':<58} {'time':>9} {'peak memory':>12}")
    for r in rows:
        mem = f"{r.memory / GIB:.0f} GiB" if r.memory else "-"
        print(f"{r.stage:<18} {r.work:<58} {_minutes(r.seconds):>9} {mem:>12}")
    print(f"{'whole recipe':<18} {'':<58} {_minutes(sum(r.seconds for r in rows)):>9}")


if __name__ == "__main__":
    main()
