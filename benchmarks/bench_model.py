"""Ours vs transformers' DeepseekV3 on the same config and weights, in one run.

    python benchmarks/bench_model.py [--preset small] [--repeats 3] [--threads 1] [--seqs 256 1024]
    python benchmarks/bench_model.py --device cuda --preset 100m     # on a GPU (wall clock, synchronized)

Prints, with ratios (ours / transformers):
* training step (forward + backward of the LM loss) tokens/s,
* batched greedy generation tokens/s (prompts of different lengths, left padding),
* KV-cache bytes per token: ours, the MLA formula, a full per-head K/V cache, and
  what transformers' cache actually held;
* the ceilings each ratio lives under, measured on this machine in the same run: the
  training step's model FLOP/s as a share of this core's FP32 GEMM peak (a 1,024³ matmul),
  so no implementation can beat ours by more than 1 / that share; and a decode step's
  weight-read floor, the time of one matrix-vector product over as many bytes as a token's
  active weights.
Each measurement alternates ours and theirs and keeps the best of `repeats` runs, because
the CPU is shared and noisy. On the CPU, times are process CPU seconds (time.process_time)
at `--threads` torch threads (default 1): on a machine shared by several jobs, wall-clock
with 2 OpenMP threads is dominated by threads waiting on descheduled siblings, not by the
code. On `--device cuda`, times are wall-clock between two `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss, generate
from dsctl.model.hf import save_hf
from dsctl.train.budget import train_flops_per_token

DEVICE = torch.device("cpu")
"""Where both models run (set from --device)."""


def _now() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = _now()
        fn()
        best = min(best, _now() - t0)
    return best


def bench_training(ours, theirs, config, batch: int, seq: int, repeats: int) -> tuple[float, float]:
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    ours.train(), theirs.train()

    def step_ours():
        compute_loss(ours, ids, mtp_weight=0.0).loss.backward()

    def step_theirs():
        theirs(ids, labels=ids).loss.backward()

    step_ours(), step_theirs()  # warm-up
    t_ours = t_theirs = float("inf")
    for _ in range(repeats):  # alternate so both see the same background load
        t_ours = min(t_ours, _best_time(step_ours, 1))
        t_theirs = min(t_theirs, _best_time(step_theirs, 1))
    tokens = batch * seq
    return tokens / t_ours, tokens / t_theirs


def gemm_peak(repeats: int) -> float:
    """FP32 GFLOP/s of a 1,024³ matmul at the current thread count: what this core's BLAS
    reaches on a shape large enough to hide every overhead."""
    a, b = torch.randn(1024, 1024, device=DEVICE), torch.randn(1024, 1024, device=DEVICE)
    a @ b  # warm-up
    return 2 * 1024**3 / _best_time(lambda: a @ b, max(repeats, 3)) / 1e9


def weight_read_floor(n_bytes: int, repeats: int) -> float:
    """Seconds for one matrix-vector product over an FP32 matrix of `n_bytes`: the least a
    batch-1 decode step can take, since it reads each of its active weights once."""
    cols = 1024
    w = torch.randn(max(1, n_bytes // (4 * cols)), cols, device=DEVICE)
    x = torch.randn(cols, device=DEVICE)
    torch.mv(w, x)
    return min(_best_time(lambda: torch.mv(w, x), 20) for _ in range(max(repeats, 3)))


def bench_generation(ours, theirs, config, batch: int, prompt_len: int, new_tokens: int, repeats: int):
    """Greedy generation both ways; returns tokens/s incl. prefill, decode-only tokens/s, checks."""
    g = torch.Generator().manual_seed(1)
    # Different lengths (prompt_len .. prompt_len + 4·(batch−1)) so left padding is exercised.
    prompts = [torch.randint(2, config.vocab_size, (prompt_len + 4 * i,), generator=g).tolist()
               for i in range(batch)]
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=DEVICE)
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=DEVICE)
    ours.eval(), theirs.eval()
    held = {}

    def run_ours(n: int):
        held["ours"] = generate(ours, prompts, max_new_tokens=n, temperature=0)

    @torch.no_grad()
    def run_theirs(n: int):
        held["theirs"] = theirs.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                         do_sample=False, pad_token_id=0, return_dict_in_generate=True)

    run_ours(new_tokens), run_theirs(new_tokens)
    same = held["ours"].tokens == held["theirs"].sequences[:, L:].tolist()
    cache = held["theirs"].past_key_values
    hf_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    hf_per_token = hf_bytes / (batch * cache.get_seq_length())
    t = {k: float("inf") for k in ("ours", "theirs", "ours1", "theirs1")}
    for _ in range(repeats):  # alternate so both see the same background load
        t["ours"] = min(t["ours"], _best_time(lambda: run_ours(new_tokens), 1))
        t["theirs"] = min(t["theirs"], _best_time(lambda: run_theirs(new_tokens), 1))
        t["ours1"] = min(t["ours1"], _best_time(lambda: run_ours(1), 1))  # prefill + first token
        t["theirs1"] = min(t["theirs1"], _best_time(lambda: run_theirs(1), 1))
    total = (batch * new_tokens / t["ours"], batch * new_tokens / t["theirs"])
    decode_tokens = batch * (new_tokens - 1)
    decode = (decode_tokens / max(t["ours"] - t["ours1"], 1e-9), decode_tokens / max(t["theirs"] - t["theirs1"], 1e-9))
    return total, decode, same, hf_per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqs", type=int, nargs="+", default=[256, 1024],
                        help="training sequence lengths; the batch keeps 2048 tokens per step")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[8, 384, 896],
                        help="shortest prompt of each generation run (short chat .. long reasoning context)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)

    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = ModelConfig.preset(args.preset, num_nextn_predict_layers=0)
    ours = DeepSeekV3(config)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(ours, tmp)
        theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ours, theirs = ours.to(DEVICE), theirs.to(DEVICE)
    print(f"config: device={DEVICE} preset={args.preset} params={config.num_parameters()} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} transformers={transformers.__version__} "
          f"attn={theirs.config._attn_implementation}")

    peak = gemm_peak(args.repeats)
    for seq in args.seqs:
        batch = max(1, 2048 // seq)
        tr_ours, tr_theirs = bench_training(ours, theirs, config, batch, seq, args.repeats)
        print(f"train step  (B={batch}, T={seq}, fwd+bwd) tokens/s: ours {tr_ours:8.1f}  transformers "
              f"{tr_theirs:8.1f}  ratio {tr_ours / tr_theirs:5.2f}x  (target >= 1.5x)")
        flops = train_flops_per_token(config, seq)
        share_ours, share_theirs = tr_ours * flops / 1e9 / peak, tr_theirs * flops / 1e9 / peak
        print(f"  model FLOP/s as a share of the GEMM peak ({peak:.1f} GFLOP/s): ours {share_ours:.0%}  "
              f"transformers {share_theirs:.0%}; any implementation of these FLOPs is at most "
              f"{1 / share_ours:.2f}x ours, {1 / share_theirs:.2f}x transformers")

    for prompt_len in args.prompt_lens:
        (g_ours, g_theirs), (d_ours, d_theirs), same, hf_per_token = bench_generation(
            ours, theirs, config, args.batch, prompt_len, args.new_tokens, args.repeats)
        print(f"generation  (B={args.batch}, prompts {prompt_len}..{prompt_len + 4 * (args.batch - 1)}, "
              f"{args.new_tokens} new, greedy) tokens/s incl. prefill: ours {g_ours:7.1f}  transformers "
              f"{g_theirs:7.1f}  ratio {g_ours / g_theirs:5.2f}x (target >= 3x); decode only: ours {d_ours:7.1f}  "
              f"transformers {d_theirs:7.1f}  ratio {d_ours / d_theirs:5.2f}x; same tokens: {same}")
        if args.batch == 1:
            weight_bytes = 4 * (config.num_parameters()[1] - config.vocab_size * config.hidden_size)  # the
            floor = weight_read_floor(weight_bytes, args.repeats)  # embedding is a one-row lookup
            print(f"  decode step: ours {1e3 / d_ours:.2f} ms  transformers {1e3 / d_theirs:.2f} ms  weight-read floor "
                  f"{1e3 * floor:.2f} ms ({weight_bytes / 1e6:.1f} MB of active weights); "
                  f"ours spends {1 - floor * d_ours:.0%} of a step above the floor")

    bytes_per = 4  # fp32
    n = config.num_hidden_layers
    mla = n * (config.kv_lora_rank + config.qk_rope_head_dim) * bytes_per
    full = n * config.num_attention_heads * (config.qk_head_dim + config.v_head_dim) * bytes_per
    from dsctl.model import LatentCache

    ours_cache = LatentCache(config, n, 1, 1).bytes_per_token()
    print(f"KV cache bytes/token (fp32): ours {ours_cache}  MLA formula {mla}  full K/V {full}  "
          f"transformers' cache {hf_per_token:.0f}  (ours/full {ours_cache / full:.3f}; target ours <= formula)")


if __name__ == "__main__":
    main()
