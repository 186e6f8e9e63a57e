"""Chat load test for `mlc serve` under several settings.

    python benchmarks/serve_chat.py dist/<model> --clients 4 --turns 3
    python benchmarks/serve_chat.py dist/<model> --setting="--replicas 1" --setting="--replicas 2"

For each setting (serve flags; by default `--prefix-cache`, then `--no-prefix-cache`) it starts
`mlc serve MODEL` on a free local port and runs two workloads against it:

- cached prefix: one client, one request at a time, each a new conversation that starts with
  the same system prompt (about `--system-tokens` tokens) and asks another question; the time
  to first token of every request but the first (which fills the cache) is reported;
- multi-turn chat: `--clients` concurrent clients, each holding `--conversations`
  conversations of `--turns` turns that resend the growing conversation (system prompt, earlier
  questions and answers) every turn, streaming `--max-tokens` greedy tokens per answer.

Prints a Markdown table: time to first token (p50/p99), inter-token latency (p50), generated
tokens/s, requests/s and the server's prefix-cache hits, then the ratios to the first setting
and whether every greedy answer was the same under every setting. Not a test: run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

WORDS = (
    "answer briefly and politely cite the document when you can never invent facts keep "
    "numbers exact prefer plain words explain steps in order mention units say when unsure"
).split()


def system_prompt(num_words: int) -> str:
    """A long, deterministic system prompt (about 1.3 tokens per word for SmolLM2's BPE)."""
    rules = []
    for i in range(num_words // 12):
        words = [WORDS[(7 * i + j) % len(WORDS)] for j in range(10)]
        rules.append(f"Rule {i + 1}: {' '.join(words)}.")
    return " ".join(rules)


class Server:
    def __init__(self, model: str, *flags: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "mlc.cli", "serve", model, "--port", str(self.port)]
        self.proc = subprocess.Popen([*command, "--log-level", "warning", *flags])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.proc.kill()
        raise TimeoutError("mlc serve did not start")

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def chat(
    client: httpx.AsyncClient, messages: list[dict], max_tokens: int
) -> tuple[str, float, list[float], int]:
    """(answer, time to first token, gaps between streamed pieces, generated tokens)."""
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, last, gaps, pieces, tokens = None, None, [], [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            delta = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
            if delta:
                now = time.perf_counter()
                if first is None:
                    first = now - start
                else:
                    gaps.append(now - last)
                last = now
                pieces.append(delta)
    return "".join(pieces), first or 0.0, gaps, tokens


async def cached_prefix(url: str, args: argparse.Namespace, system: str) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        ttfts = []
        for i in range(args.repeats + 1):
            question = f"Question {i}: what is {i} plus {i + 3}?"
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
            ttfts.append((await chat(client, messages, 4))[1])
        return ttfts[1:]


async def multi_turn(url: str, args: argparse.Namespace, system: str) -> dict:
    answers: dict[tuple[int, int, int], str] = {}
    ttfts: list[float] = []
    gaps: list[float] = []
    generated = 0
    requests = 0
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one_client(c: int) -> None:
            nonlocal generated, requests
            for k in range(args.conversations):
                messages = [{"role": "system", "content": system}]
                for t in range(args.turns):
                    question = f"Client {c}, chat {k}, turn {t}: name a colour and a number."
                    messages.append({"role": "user", "content": question})
                    answer, first, pause, tokens = await chat(client, messages, args.max_tokens)
                    messages.append({"role": "assistant", "content": answer})
                    answers[c, k, t] = answer
                    ttfts.append(first)
                    gaps.extend(pause)
                    generated += tokens
                    requests += 1

        start = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(args.clients)))
        elapsed = time.perf_counter() - start
    return {
        "ttft_p50": float(np.percentile(ttfts, 50)),
        "ttft_p99": float(np.percentile(ttfts, 99)),
        "itl_p50": float(np.percentile(gaps, 50)) if gaps else 0.0,
        "tok_per_s": generated / elapsed,
        "req_per_s": requests / elapsed,
        "answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=2, help="per client")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--system-tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="cached-prefix requests")
    parser.add_argument("--serve-flag", action="append", default=[], help="extra serve flags")
    parser.add_argument(
        "--setting", action="append", default=None, help="serve flags of one setting (repeat)"
    )
    args = parser.parse_args()
    system = system_prompt(int(args.system_tokens / 1.3))
    rows = []
    for setting in args.setting or ["--prefix-cache", "--no-prefix-cache"]:
        server = Server(args.model, *setting.split(), *args.serve_flag)
        try:
            ttft = asyncio.run(cached_prefix(server.url, args, system))
            load = asyncio.run(multi_turn(server.url, args, system))
            hits = server.metric("mlc_prefix_cache_hits_total")
            reused = server.metric("mlc_prefix_cache_tokens_reused_total")
            prompt = server.metric("mlc_prompt_tokens_total")
        finally:
            server.stop()
        rows.append((setting, float(np.median(ttft)), load, hits, reused, prompt))
    print(
        "| setting | TTFT, shared system prompt (median s) | chat TTFT p50 / p99 (s) "
        "| inter-token p50 (ms) | generated tok/s | req/s | prefix hits | prompt tokens reused |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for setting, ttft, load, hits, reused, prompt in rows:
        print(
            f"| {setting} | {ttft:.3f} | {load['ttft_p50']:.3f} / {load['ttft_p99']:.3f} | "
            f"{1000 * load['itl_p50']:.1f} | {load['tok_per_s']:.1f} | {load['req_per_s']:.2f} "
            f"| {hits:.0f} | {reused:.0f} of {prompt:.0f} |"
        )
    first = rows[0]
    for row in rows[1:]:
        print(
            f"\n{first[0]} / {row[0]}: cached-prefix TTFT ratio {first[1] / row[1]:.2f}, "
            f"multi-turn throughput ratio {first[2]['tok_per_s'] / row[2]['tok_per_s']:.2f}"
        )
    same = all(row[2]["answers"] == first[2]["answers"] for row in rows)
    print(f"greedy answers identical under every setting: {same}")


if __name__ == "__main__":
    main()
