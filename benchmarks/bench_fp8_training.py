"""mini_r1's pretraining step with FP8 on every Linear against FP32, in one run.

    python benchmarks/bench_fp8_training.py [--steps 20] [--threads 2]

The model is mini_r1's pretrain model (the `small` preset with the recipe's
model_overrides, 1.67M parameters), trained with AdamW on random tokens at the recipe's
batch (16 x 256) twice, interleaved step by step so load drifts hit both alike: FP32,
and FP8 on every Linear (`fp8_min_features = 1`, the CPU emulation), starting from the
FP32 model's weights. Prints tokens/s of each (the mean of the fastest third of the
timed steps), the FP8 / FP32 ratio (target >= 0.85) and both final losses.
"""

from __future__ import annotations

import argparse
import copy
import time
import tomllib
from pathlib import Path

import torch

from dsctl.fp8 import convert_to_fp8
from dsctl.model import DeepSeekV3, ModelConfig, compute_loss

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mini_r1.toml"


def _recipe_model() -> tuple[ModelConfig, dict]:
    stages = tomllib.loads(RECIPE.read_text())["stages"]
    pretrain, vocab = stages["pretrain"], stages["tokenize"]["vocab_size"]
    config = ModelConfig.preset(pretrain["model"], vocab_size=vocab, **pretrain["model_overrides"])
    return config, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (the best third is kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, pretrain = _recipe_model()
    torch.manual_seed(0)
    base = DeepSeekV3(config)
    models = {"fp32": base, "fp8": copy.deepcopy(base)}
    converted = convert_to_fp8(models["fp8"], min_features=1)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=pretrain["lr"]) for name, m in models.items()}
    batch, seq = pretrain["batch_size"], pretrain["seq_len"]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, config.vocab_size, (batch, seq), generator=gen) for _ in range(args.steps + 1)]
    print(f"mini_r1 pretrain model: {sum(p.numel() for p in base.parameters()):,} parameters, {converted} Linears "
          f"in FP8, batch {batch} x {seq}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    times = {name: [] for name in models}
    losses = {name: [] for name in models}
    first_step = {}
    for step, ids in enumerate(batches):
        for name, model in models.items():
            t0 = time.perf_counter()
            loss = compute_loss(model, ids, mtp_weight=0.3).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            losses[name].append(loss.item())
            if step == 0:
                first_step[name] = elapsed  # warm-up
            else:
                times[name].append(elapsed)

    tokens = batch * seq
    rate = {name: tokens / (sum(sorted(t)[: max(1, len(t) // 3)]) / max(1, len(t) // 3)) for name, t in times.items()}
    for name in models:
        ratio = rate[name] / rate["fp32"]
        print(f"  {name:5s} {rate[name]:8.0f} tok/s  {ratio:5.2f}x fp32  first step {first_step[name]:6.2f} s")
    print(f"final loss: fp8 {losses['fp8'][-1]:.4f}, fp32 {losses['fp32'][-1]:.4f}")


if __name__ == "__main__":
    main()
