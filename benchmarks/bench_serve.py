"""`dsctl serve` throughput: tokens/s with 1, 4 and 16 concurrent clients, against the same
requests sent one by one.

    python benchmarks/bench_serve.py CHECKPOINT            # e.g. a mini_r1 grpo checkpoint dir
    DSCTL_WORKDIR=work python benchmarks/bench_serve.py mini_r1:grpo

It starts a real server on 127.0.0.1, sends each client's requests with the official
`openai` client (greedy, `max_tokens` fixed, distinct 2-digit problems), and counts the
completion tokens the server reports in `usage`. "one by one" sends the very same
requests sequentially; the ratio is what continuous batching buys.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from dsctl.parallel.launch import free_port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dsctl.cli", "serve", args.checkpoint, "--port", str(port),
                               "--model-name", "bench"], env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)

        def ask(a: int) -> int:
            reply = client.chat.completions.create(
                model="bench", temperature=0, max_tokens=args.max_tokens,
                messages=[{"role": "user", "content": f"What is {10 + a % 80} + {17 + (a * 7) % 80}?"}])
            return reply.usage.completion_tokens

        ask(0)  # warm-up
        print(f"| clients | requests | tokens | concurrent tok/s | one by one tok/s | speed-up |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in args.clients:
            ids = list(range(n * args.requests_per_client))
            started = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                tokens = sum(pool.map(ask, ids))
            together = tokens / (time.perf_counter() - started)
            started = time.perf_counter()
            alone_tokens = sum(ask(a) for a in ids)
            alone = alone_tokens / (time.perf_counter() - started)
            print(f"| {n} | {len(ids)} | {tokens} | {together:.0f} | {alone:.0f} | {together / alone:.2f}× |")
        health = httpx.get(base + "/health").json()
        print(f"\nlargest decode batch {health['largest_batch']}, {health['decode_steps']} batched decode steps")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
