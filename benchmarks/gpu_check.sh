#!/usr/bin/env bash
# One prepared check for a lent H100/H200 (about 10 minutes; never run by CI):
#
#   bash benchmarks/gpu_check.sh [OUT_FILE]        # default: gpu_check.txt
#
# Writes every figure to OUT_FILE (and the terminal):
#   1. the device, driver, torch and triton versions;
#   2. the Triton FP8 kernels against the torch reference on this GPU and their TFLOP/s
#      against torch bf16 (cuBLAS) at DeepSeek-V3 shapes, e.g. 4096 x 7168 x 16384
#      (benchmarks/bench_fp8.py, which checks each Triton result against the reference);
#   3. benchmarks/bench_model.py on the GPU (ours vs transformers' DeepseekV3, training
#      and generation tokens/s, same greedy tokens);
#   4. gpu_r1's whole chain (source to eval) at its model sizes but reduced step, problem
#      and sample counts, then each stage's time scaled to the full recipe
#      (benchmarks/estimate_recipe.py --measured) beside the FLOP-based estimate.
# Each part has its own time limit, so one that hangs cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check.txt}
py=${PYTHON:-python}
work=$(mktemp -d /tmp/gpu_check.XXXXXX)

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $py cannot import torch; run it with the project's venv (PYTHON=.venv/bin/python)" >&2
  exit 2
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $py; this script needs one GPU (H100/H200)" >&2
  exit 2
fi

part() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }
# gpu_r1 at reduced work: the model, batch and sequence sizes stay the recipe's.
reduced=(
  --set source.task_problems_per_family=40000
  --set pretrain.max_steps=100 --set pretrain.checkpoint_every=100 --set pretrain.eval_every=100
  --set extend.max_steps=20 --set sft.max_steps=40 --set sft_more.max_steps=40 --set grpo.max_steps=10
  --set rejection_sample.train_problems=2048 --set distill.max_steps=50 --set eval.eval_problems=200
  --set rft_samples.train_problems=2048 --set rft.max_steps=40 --set teacher_more.max_steps=50
)
{
  part "device"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"

  part "Triton FP8 GEMM vs torch reference and bf16 (bench_fp8.py)"
  timeout 120 "$py" benchmarks/bench_fp8.py --repeats 10 --json "$work/fp8.json"
  echo "json: $(cat "$work/fp8.json" 2>/dev/null)"

  part "ours vs transformers on the GPU (bench_model.py, preset 100m)"
  timeout 90 "$py" benchmarks/bench_model.py --device cuda --preset 100m --repeats 3 --seqs 1024 --prompt-lens 32 896

  part "gpu_r1's whole chain at reduced step counts (full model sizes)"
  # Every stage of the recipe on this GPU with fewer steps, problems and samples, then
  # each stage's measured time scaled to the recipe's full work (estimate_recipe.py).
  timeout 330 "$py" -m dsctl.cli -w "$work/store" run recipes/gpu_r1.toml "${reduced[@]}"
  "$py" -m dsctl.cli -w "$work/store" status recipes/gpu_r1.toml "${reduced[@]}"
  "$py" benchmarks/estimate_recipe.py recipes/gpu_r1.toml --measured "$work/store"
  "$py" benchmarks/estimate_recipe.py recipes/gpu_r1.toml
  "$py" - "$work/store" <<'PY'
import json, sys
from pathlib import Path
store = Path(sys.argv[1])
key = json.loads((store / "refs" / "gpu_r1" / "pretrain.json").read_text())["key"]
rows = [json.loads(line) for line in (store / "objects" / key / "metrics.jsonl").read_text().splitlines() if line.strip()]
steady = [r["tokens_per_s"] for r in rows[10:] if "tokens_per_s" in r]
print(f"pretrain steps {len(rows)}; tokens/s after step 10: mean {sum(steady) / max(len(steady), 1):.0f}; "
      f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
PY

  part "done"
} 2>&1 | tee "$out"
