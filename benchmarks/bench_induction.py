"""How many steps until the mini_r1 model can copy from its context?

Passkey retrieval, and reading the operands of "What is 33 + 82?" into a worked
solution, both need the model to find a token earlier in its context and copy what
follows it: an induction head. This script trains fresh copies of the mini_r1 model
shape on two synthetic tasks and reports the first step at which it copies:

* offset: a random token sequence then the same sequence again, always at the same
  distance — solvable with one fixed relative-position attention head;
* induction: the sequence repeats after a random gap — the model must match content
  (the token before) and copy the next one, as retrieval does.

Copy accuracy is greedy next-token accuracy on the positions that can be copied. The
peer, `--model llama`, is transformers' LlamaForCausalLM of the same width, depth and
heads (dense, one 32-dim RoPE key per head), trained the same way.
Example (2 cores: ~1 min for offset, ~5 min for induction at 3000 steps):

    python benchmarks/bench_induction.py --task offset --steps 400
    python benchmarks/bench_induction.py --task induction --steps 3000 --every 250
    python benchmarks/bench_induction.py --task induction --steps 2000 --every 250 --model llama
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from dsctl.model.config import ModelConfig
from dsctl.model.model import DeepSeekV3

# The mini_r1 pretrain shape (recipes/mini_r1.toml).
MINI_R1 = dict(hidden_size=128, intermediate_size=384, moe_intermediate_size=64, n_routed_experts=8,
               num_experts_per_tok=2, n_group=2, topk_group=1)
SPAN, VOCAB_LO, VOCAB_HI, SEP = 24, 10, 60, 5


def batch(task: str, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows and a mask of the target positions that copying can predict."""
    x = torch.randint(VOCAB_LO, VOCAB_HI, (size, SPAN), generator=gen)
    bos = torch.zeros(size, 1, dtype=torch.long)
    if task == "offset":
        ids = torch.cat([bos, x, torch.full((size, 1), SEP), x], 1)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, SPAN + 2:] = True
        return ids, mask
    tail = torch.randint(VOCAB_LO, VOCAB_HI, (size, 2 * SPAN + 1), generator=gen)
    mask = torch.zeros(size, 2 * SPAN + 2, dtype=torch.bool)
    half = SPAN // 2 + 1
    for b in range(size):
        gap = int(torch.randint(0, SPAN // 2 + 1, (), generator=gen))
        tail[b, SPAN + gap: SPAN + gap + half] = x[b, :half]
        mask[b, 1 + SPAN + gap + 1: 1 + SPAN + gap + half] = True  # after the first repeated token
    tail[:, :SPAN] = x
    return torch.cat([bos, tail], 1), mask


def build_model(kind: str, overrides: dict) -> torch.nn.Module:
    config = ModelConfig.preset("small", **{**MINI_R1, **overrides})
    if kind == "dsctl":
        return DeepSeekV3(config)
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, max_position_embeddings=config.max_position_embeddings))


def forward(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["offset", "induction"], default="offset")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threshold", type=float, default=0.5, help="copy accuracy that counts as copying")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=["dsctl", "llama"], default="dsctl")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="model config override on top of the mini_r1 shape, e.g. qk_rope_head_dim=32")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with a JSON value, e.g. qk_rope_head_dim=32")

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_model(args.model, overrides)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    started, first = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        ids, _ = batch(args.task, args.batch_size, gen)
        logits = forward(model, ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                ids, mask = batch(args.task, 64, torch.Generator().manual_seed(10**6 + args.seed))
                pred = forward(model, ids)[:, :-1].argmax(-1)
                hit = (pred == ids[:, 1:])[mask[:, 1:]]
                acc = hit.float().mean().item()
            print(f"{args.task} step {step:5d}  loss {loss.item():.3f}  copy accuracy {acc:.3f}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            if first is None and acc >= args.threshold:
                first = step
    verdict = f"copies (accuracy >= {args.threshold}) from step {first}" if first else \
        f"does not copy within {args.steps} steps"
    print(f"{args.task}: the {'mini_r1' if args.model == 'dsctl' else 'llama peer'} model {verdict}")


if __name__ == "__main__":
    main()
