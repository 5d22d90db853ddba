"""Our sampler (inverse CDF, `dsctl.model.generate.inverse_cdf`) against `torch.multinomial`,
and our top-p nucleus (`generate.nucleus`) against ranking the whole vocabulary with a sort.

    python benchmarks/bench_sampler.py [--threads 2] [--repeats 5]

Prints, for batch × vocabulary shapes from one chat request to a GRPO rollout, the time of
one draw per row from a softmax both ways and the ratio; then checks that both draw from
the same distribution: 400,000 draws each from one peaked 1,024-token distribution, their
total-variation distance to the true probabilities, and the largest per-token deviation in
binomial standard errors among the tokens expected at least 100 times. Then the nucleus
at top-p 0.95, ours against a full sort, on rows as peaked as a trained model's at
temperature 0.6, less peaked, and flat (nuclei of hundreds of tokens, which ours ranks in
full too), checking that both keep the same tokens. Times are wall clock, best of `repeats`
after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from dsctl.model.generate import inverse_cdf, nucleus

SHAPES = ((1, 1024), (64, 1024), (256, 1024), (256, 32768), (1, 129280))
"""(rows, vocab): one chat request, an eval chunk, a GRPO rollout of mini_r1, a larger
vocabulary, and one request at DeepSeek-V3's vocabulary."""


def ours(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64)
    return inverse_cdf(probs, uniform)


def peer(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def best_ms(fn, probs: torch.Tensor, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    fn(probs, generator)
    calls = max(1, 2_000_000 // probs.numel())  # ~2M probabilities per timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(probs, generator)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


TOP_P = 0.95
"""What eval and rejection_sample use (DeepSeek-R1's protocol)."""


def nucleus_by_sort(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The peer: rank the whole vocabulary, keep a token while the ones above it hold ≤ top_p."""
    ranked, order = probs.sort(dim=-1, descending=True)
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ranked.cumsum(-1) - ranked <= top_p)


def nuclei(repeats: int) -> None:
    # At T = 0.6, logit spread 10 gives nuclei of 1-3 of 1,024 tokens, as mini_r1's trained
    # checkpoints have; spread 3 ~15 (past our first prefix, inside the second); spread
    # 0.5 ~800, past both, so we rank those rows in full as the peer does.
    for rows, vocab in SHAPES:
        for spread in (10.0, 3.0, 0.5):
            logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(4)) * spread
            probs = (logits / 0.6).softmax(-1)
            kept = nucleus(probs, TOP_P)
            same = torch.equal(kept, nucleus_by_sort(probs, TOP_P))
            size = kept.sum(-1).float().median().item()
            t_ours = best_ms(lambda p, _: nucleus(p, TOP_P), probs, repeats)
            t_peer = best_ms(lambda p, _: nucleus_by_sort(p, TOP_P), probs, repeats)
            print(f"{rows:>4} rows x {vocab:>6} tokens, median nucleus {size:5.0f}: ours {t_ours:7.3f} ms  "
                  f"full sort {t_peer:7.3f} ms  ratio {t_peer / t_ours:5.1f}x  same tokens kept: {same}")


def agreement(draws: int = 400_000) -> None:
    logits = torch.randn(1024, generator=torch.Generator().manual_seed(3)) * 3
    probs = logits.softmax(-1)
    expected = probs.double()
    for name, fn in (("ours", ours), ("torch.multinomial", peer)):
        generator = torch.Generator().manual_seed(1)
        tokens = torch.cat([fn(probs.expand(10_000, -1), generator) for _ in range(draws // 10_000)])
        freq = torch.bincount(tokens, minlength=probs.numel()).double() / draws
        # Per-token z-scores only where a token is expected 100+ times: below that the normal
        # approximation of a binomial count does not hold.
        common = expected * draws >= 100
        z = (freq - expected)[common].abs() / (expected * (1 - expected) / draws).sqrt()[common]
        print(f"{name:>18}: total variation to the true distribution {0.5 * (freq - expected).abs().sum():.4f}; "
              f"over the {int(common.sum())} tokens expected 100+ times, largest deviation {z.max():.1f} SE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    for rows, vocab in SHAPES:
        probs = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(2)) * 3).softmax(-1)
        t_ours, t_peer = best_ms(ours, probs, args.repeats), best_ms(peer, probs, args.repeats)
        print(f"{rows:>4} rows x {vocab:>6} tokens: ours {t_ours:7.3f} ms  torch.multinomial {t_peer:7.3f} ms  "
              f"ratio {t_peer / t_ours:6.1f}x")
    agreement()
    print(f"top-p {TOP_P} nucleus at temperature 0.6:")
    nuclei(args.repeats)


if __name__ == "__main__":
    main()
