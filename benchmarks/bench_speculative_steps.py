"""What a speculative decoding step costs against a plain one, at batch 1, on one checkpoint.

    python benchmarks/bench_speculative_steps.py CHECKPOINT_DIR [--repeats 2]

Greedy `generate` on eight 2-digit prompts (the chat template, the tokenizer's stop rule,
48 new tokens at most), plain and speculative in turn, timing each DecodeBatch call:
`step` (one token per row), `verify` (the last token and its draft in one pass) and
`draft` (MTP module 1 over the verify step's two slots). Prints the tokens each mode
emitted (equal: speculative decoding is exact for greedy), the calls and ms per call, and
the bound that follows: even with every draft accepted, a verify+draft step yields 2
tokens, so speculative decoding is at most 2 · step / (verify + draft) times faster.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsctl.model import decode  # noqa: E402
from dsctl.model.hf import load_hf  # noqa: E402
from dsctl.sampling import stop_rule  # noqa: E402
from dsctl.tokenizer import load_tokenizer  # noqa: E402

generation = importlib.import_module("dsctl.model.generate")  # the module, not the function
PROBLEMS = [(12, 34), (56, 78), (91, 23), (45, 67), (38, 49), (27, 64), (83, 15), (72, 29)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint directory with MTP modules")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model, tokenizer = load_hf(args.checkpoint).eval(), load_tokenizer(args.checkpoint)
    prompts = [tokenizer.chat_prompt(f"{a}+{b}") for a, b in PROBLEMS]
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for name in ("step", "verify", "draft"):
        original = getattr(decode.DecodeBatch, name)

        def timed(self, *a, _original=original, _name=name, **k):
            start = time.perf_counter()
            try:
                return _original(self, *a, **k)
            finally:
                spent[_name] += time.perf_counter() - start
                calls[_name] += 1

        setattr(decode.DecodeBatch, name, timed)
    per_call: dict[str, list[float]] = defaultdict(list)
    outputs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for speculative in (False, True):
                spent.clear()
                calls.clear()
                outputs[speculative] = [generation.generate(model, [p], max_new_tokens=48, temperature=0,
                                                            speculative=speculative, decode=tokenizer,
                                                            **stop_rule(tokenizer)).tokens[0] for p in prompts]
                for name in spent:
                    per_call[name].append(1000 * spent[name] / calls[name])
                counts = {name: calls[name] for name in calls}
                print(("speculative" if speculative else "plain      "),
                      f"tokens {sum(map(len, outputs[speculative]))}", counts,
                      {k: f"{1000 * spent[k] / calls[k]:.2f} ms" for k in spent})
    assert outputs[True] == outputs[False], "speculative greedy output differs from plain greedy"
    step, verify, draft = (min(per_call[k]) for k in ("step", "verify", "draft"))
    print(f"best ms per call: step {step:.2f}, verify {verify:.2f}, draft {draft:.2f}; a speculative step costs "
          f"{(verify + draft) / step:.2f} plain steps, so at full acceptance it is at most "
          f"{2 * step / (verify + draft):.2f}x plain")


if __name__ == "__main__":
    main()
