"""Load test for `mlc serve`: throughput and latency at several numbers of concurrent clients.

    mlc serve dist/<model> --port 8000 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --concurrency 1 4 16 64

Each client sends streaming requests back to back until `--requests` requests per level have
finished: `--task story`, `/v1/completions` with `ignore_eos` (every answer has exactly
`--max-tokens` tokens); `--task edit`, `/v1/chat/completions` asking to correct a given text
(`mlc.bench_speculative`; answers end where the model stops), an input-grounded task for
`mlc serve --speculative`.
Prints a Markdown table: requests/s, generated tokens/s, and p50/p99 of time to first token and
of request latency. Not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import numpy as np

from mlc.bench_speculative import EDIT_TASK_PROMPT

PROMPT = "Write a short story about a robot who learns to paint, in simple words."


async def one_request(
    client: httpx.AsyncClient, args: argparse.Namespace
) -> tuple[float, float, int]:
    """(time to first token, latency, generated tokens) of one streaming request."""
    body = {
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.task == "edit":
        body["messages"] = [{"role": "user", "content": EDIT_TASK_PROMPT}]
        path = "/v1/chat/completions"
    else:
        body.update(prompt=PROMPT, ignore_eos=True)
        path = "/v1/completions"
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choice = chunk["choices"][0] if chunk.get("choices") else {}
            text = choice.get("text") or (choice.get("delta") or {}).get("content")
            if text and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - start, tokens


async def run_level(args: argparse.Namespace, concurrency: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    remaining = max(args.requests, concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=600, limits=limits
    ) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                results.append(await one_request(client, args))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ttft = np.array([r[0] for r in results])
    latency = np.array([r[1] for r in results])
    return {
        "clients": concurrency,
        "requests": len(results),
        "req_per_s": len(results) / elapsed,
        "tok_per_s": sum(r[2] for r in results) / elapsed,
        "ttft_p50": float(np.percentile(ttft, 50)),
        "ttft_p99": float(np.percentile(ttft, 99)),
        "lat_p50": float(np.percentile(latency, 50)),
        "lat_p99": float(np.percentile(latency, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--task", choices=["story", "edit"], default="story")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = [asyncio.run(run_level(args, c)) for c in args.concurrency]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| clients | requests | req/s | generated tok/s | TTFT p50 / p99 (s) "
        "| latency p50 / p99 (s) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | "
            f"{r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | {r['lat_p50']:.2f} / {r['lat_p99']:.2f} |"
        )


if __name__ == "__main__":
    main()
