"""`dsctl import` time and peak memory against the size of the weights it imports.

    python benchmarks/bench_import.py --hidden 1024 --layers 8 --experts 32 --shard 200MB

Builds a random DeepseekV3 with transformers, saves it sharded in bf16 (as published
checkpoints are), optionally FP8 block-quantized (`--fp8`, DeepSeek's release format),
then runs `dsctl import` in a fresh process and reads its peak RSS. The claim checked:
import streams shard by shard, so its peak stays near one shard plus the interpreter,
far under the two copies of the weights a load-then-save import holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# The import's own peak: VmHWM read inside the child. The child's ru_maxrss would count
# the pages it shared with this (large, model-building) parent between fork and exec.
_MEASURED = """
import sys
from dsctl.cli import main
out = sys.argv.pop(1)
try:
    main(sys.argv[1:])
finally:
    status = open("/proc/self/status").read()
    kb = int(status.split("VmHWM:")[1].split()[0])
    open(out, "w").write(str(kb * 1024))
"""


def build(directory: Path, hidden: int, layers: int, experts: int, shard: str, fp8: bool) -> int:
    """Save a random model; returns the bytes of its weights on disk."""
    import transformers
    from safetensors.torch import load_file, save_file

    from dsctl.fp8.reference import weight_quant
    sys.path.insert(0, str(ROOT))
    from tests.test_import import write_bpe_tokenizer

    transformers.logging.set_verbosity_error()
    config = transformers.DeepseekV3Config(
        vocab_size=32000, hidden_size=hidden, intermediate_size=4 * hidden, moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
        n_routed_experts=experts, n_shared_experts=1, num_experts_per_tok=4, first_k_dense_replace=1, n_group=4,
        topk_group=2, kv_lora_rank=256, q_lora_rank=384, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        max_position_embeddings=2048, dtype="bfloat16")
    model = transformers.DeepseekV3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size=shard)
    del model
    write_bpe_tokenizer(directory, vocab_size=1000)
    if fp8:
        for path in sorted(directory.glob("*.safetensors")):
            tensors = load_file(str(path))
            out = {}
            for name, t in tensors.items():
                if t.dim() == 2 and name.endswith("_proj.weight"):
                    out[name], out[name + "_scale_inv"] = weight_quant(t.float())
                else:
                    out[name] = t
            save_file(out, str(path))
        hf = json.loads((directory / "config.json").read_text())
        hf["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
        (directory / "config.json").write_text(json.dumps(hf))
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--shard", default="200MB")
    parser.add_argument("--fp8", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, work = Path(tmp) / "model", Path(tmp) / "work"
        weights = build(src, args.hidden, args.layers, args.experts, args.shard, args.fp8)
        shards = sorted(src.glob("*.safetensors"))
        largest = max(p.stat().st_size for p in shards)
        started = time.perf_counter()
        hwm = Path(tmp) / "vmhwm"
        subprocess.run([sys.executable, "-c", _MEASURED, str(hwm), "--workdir", str(work), "--quiet", "import",
                        str(src)], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak = int(hwm.read_text())
        written = sum(p.stat().st_size for p in (work / "objects").rglob("*.safetensors"))
        print(json.dumps({
            "weights_mb": round(weights / 1e6, 1), "shards": len(shards), "largest_shard_mb": round(largest / 1e6, 1),
            "written_mb": round(written / 1e6, 1), "fp8": args.fp8, "import_s": round(seconds, 1),
            "peak_rss_mb": round(peak / 1e6, 1), "peak_over_weights": round(peak / weights, 2),
        }, indent=2))


if __name__ == "__main__":
    main()
