"""`dsctl serve` throughput: tokens/s with 1, 4 and 16 concurrent clients, against the same
requests sent one by one, and what MTP speculative decoding buys one client.

    python benchmarks/bench_serve.py CHECKPOINT            # e.g. a mini_r1 grpo checkpoint dir
    DSCTL_WORKDIR=work python benchmarks/bench_serve.py mini_r1:grpo

It starts a real server on 127.0.0.1, sends each client's requests with the official
`openai` client (greedy, `max_tokens` fixed, distinct 2-digit problems), and counts the
completion tokens the server reports in `usage`. "one by one" sends the very same
requests sequentially; the ratio is what continuous batching buys. Then one client sends
the same requests to fresh servers with and without `--no-speculative`: the ratio is
what MTP drafts buy at batch 1, next to the draft acceptance the server reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from dsctl.parallel.launch import free_port


@contextlib.contextmanager
def serving(checkpoint: str, *flags: str) -> Iterator[str]:
    """A `dsctl serve` process on a free port; yields its base URL once /health answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dsctl.cli", "serve", checkpoint, "--port", str(port),
                               "--model-name", "bench", *flags], env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def asker(base: str, max_tokens: int) -> Callable[[int], int]:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(a: int) -> int:
        reply = client.chat.completions.create(
            model="bench", temperature=0, max_tokens=max_tokens,
            messages=[{"role": "user", "content": f"What is {10 + a % 80} + {17 + (a * 7) % 80}?"}])
        return reply.usage.completion_tokens

    ask(0)  # warm-up
    return ask


def one_by_one(ask: Callable[[int], int], ids: list[int]) -> float:
    started = time.perf_counter()
    tokens = sum(ask(a) for a in ids)
    return tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--speculative-requests", type=int, default=40,
                        help="requests one client sends to compare speculative and plain greedy decoding")
    args = parser.parse_args(argv)

    with serving(args.checkpoint) as base:
        ask = asker(base, args.max_tokens)
        print("| clients | requests | tokens | concurrent tok/s | one by one tok/s | speed-up |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in args.clients:
            ids = list(range(n * args.requests_per_client))
            started = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                tokens = sum(pool.map(ask, ids))
            together = tokens / (time.perf_counter() - started)
            alone = one_by_one(ask, ids)
            print(f"| {n} | {len(ids)} | {tokens} | {together:.0f} | {alone:.0f} | {together / alone:.2f}× |")
        health = httpx.get(base + "/health").json()
        print(f"\nlargest decode batch {health['largest_batch']}, {health['decode_steps']} batched decode steps")
    if not health["speculative"]:
        print("the checkpoint has no MTP module: no speculative decoding to compare")
        return
    # One client, the same greedy requests, on fresh servers with and without MTP drafts,
    # alternated twice (best of two each), so neither side gets the warmer machine.
    ids = list(range(args.speculative_requests))
    rates: dict[str, list[float]] = {"speculative": [], "plain": []}
    for _ in range(2):
        for name, flags in (("speculative", ()), ("plain", ("--no-speculative",))):
            with serving(args.checkpoint, *flags) as base:
                rates[name].append(one_by_one(asker(base, args.max_tokens), ids))
                health = httpx.get(base + "/health").json()
            if name == "speculative":
                acceptance = health["draft_acceptance"]
    speculative, plain = max(rates["speculative"]), max(rates["plain"])
    print(f"one client, {len(ids)} greedy requests: MTP draft acceptance {acceptance:.3f}; "
          f"speculative {speculative:.0f} tok/s vs plain {plain:.0f} tok/s ({speculative / plain:.2f}×)")


if __name__ == "__main__":
    main()
