#!/usr/bin/env bash
# One prepared check for a lent H100/H200 (about 8 minutes; never run by CI):
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
#   4. 50 steps of gpu_r1's pretrain (its model, precision fp8, batch and sequence length)
#      on a smaller offline world, so the data stages take seconds, with the step metrics.
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
{
  part "device"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"

  part "Triton FP8 GEMM vs torch reference and bf16 (bench_fp8.py)"
  timeout 180 "$py" benchmarks/bench_fp8.py --repeats 10 --json "$work/fp8.json"
  echo "json: $(cat "$work/fp8.json" 2>/dev/null)"

  part "ours vs transformers on the GPU (bench_model.py, preset 100m)"
  timeout 150 "$py" benchmarks/bench_model.py --device cuda --preset 100m --repeats 3 --seqs 1024 --prompt-lens 32 896

  part "gpu_r1 pretrain, 50 steps"
  timeout 240 "$py" -m dsctl.cli -w "$work/store" run recipes/gpu_r1.toml --until pretrain \
    --set source.task_problems_per_family=4000 --set source.max_prose_docs=400 \
    --set pretrain.max_steps=50 --set pretrain.checkpoint_every=50 --set pretrain.eval_every=50
  "$py" - "$work/store" <<'PY'
import json, sys
from pathlib import Path
store = Path(sys.argv[1])
key = json.loads((store / "refs" / "gpu_r1" / "pretrain.json").read_text())["key"]
obj = store / "objects" / key
print("summary:", json.dumps(json.loads((obj / "manifest.json").read_text())["metrics"], sort_keys=True))
rows = [json.loads(line) for line in (obj / "metrics.jsonl").read_text().splitlines() if line.strip()]
steady = [r["tokens_per_s"] for r in rows[10:] if "tokens_per_s" in r]
print(f"steps {len(rows)}; tokens/s after step 10: mean {sum(steady) / max(len(steady), 1):.0f}; "
      f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
PY
  part "done"
} 2>&1 | tee "$out"
