"""`mlc serve --replicas`: engine replicas behind Ray Serve (a local Ray cluster on 127.0.0.1):
the same answers as one process, prefix-aware routing, summed metrics, a replica that dies."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from test_serve import GQA, Server

from mlc import ChatModule, GenerationConfig
from mlc.runtime.serve import replicas
from mlc.runtime.serve.replicas import Balancer, check_replicas, routing_keys, sum_metrics
from mlc.runtime.serve.service import EngineOptions

PROMPTS = [f"Tell me about robot number {i}." for i in range(6)]


@pytest.fixture(scope="module")
def built(tiny_builds):
    return tiny_builds.get("gqa", **GQA)[1]


@pytest.fixture(scope="module")
def ray_server(built, tmp_path_factory):
    log = tmp_path_factory.mktemp("ray") / "serve.log"  # Ray writes a lot
    srv = Server(built, "--replicas", "2", log=log)
    yield srv
    code, output = srv.stop()
    assert code == 0, output[-3000:]
    leftovers = subprocess.run(["pgrep", "-f", "ray::ServeReplica"], capture_output=True)
    assert leftovers.stdout == b"", "Ray processes outlived the server"


def _complete(url: str, prompt, max_tokens: int = 12) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def test_replicas_answer_as_one_process_does(ray_server, built):
    """Concurrent chat requests, streamed and not: each answer equals `ChatModule`'s, both
    replicas serve, and /metrics sums them."""
    cm = ChatModule(str(built))
    want = []
    for prompt in PROMPTS:
        cm.reset_chat()
        want.append(cm.generate(prompt, GenerationConfig(temperature=0, max_tokens=12)))

    def ask(prompt: str, stream: bool) -> tuple[str, str]:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": stream,
        }
        url = f"{ray_server.url}/v1/chat/completions"
        if not stream:
            response = httpx.post(url, json=body, timeout=120)
            text = response.json()["choices"][0]["message"]["content"]
            return text, response.headers["x-mlc-replica"]
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
            text = "".join(
                json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events
            )
            return text, response.headers["x-mlc-replica"]

    jobs = [(p, i % 2 == 0) for i, p in enumerate(PROMPTS)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: ask(*job), jobs))
    assert [text for text, _ in answers] == want
    assert {replica for _, replica in answers} == {"0", "1"}
    metrics = ray_server.metrics()
    assert metrics["mlc_replicas"] == 2
    assert metrics['mlc_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 6


def test_requests_that_start_alike_go_to_the_same_replica(ray_server):
    """Four prompts sharing a 100-token start, one after another: all on one replica, whose
    prefix cache serves the last three (round-robin would reuse for two at most)."""
    before = ray_server.metrics()["mlc_prefix_cache_hits_total"]
    start = [(7 * i) % 300 + 3 for i in range(100)]
    served = {
        _complete(ray_server.url, [*start, 5 + i], 4).headers["x-mlc-replica"] for i in range(4)
    }
    assert len(served) == 1
    assert ray_server.metrics()["mlc_prefix_cache_hits_total"] - before == 3


def test_a_replica_that_dies_fails_its_requests_clearly_and_comes_back(ray_server):
    pids = httpx.get(f"{ray_server.url}/replicas", timeout=30).json()["pids"]
    body = {"prompt": "hello", "max_tokens": 240, "temperature": 1.0, "stream": True, "n": 8}
    events = []
    with httpx.stream("POST", f"{ray_server.url}/v1/completions", json=body, timeout=60) as r:
        index = int(r.headers["x-mlc-replica"])
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                if len(events) == 3:
                    os.kill(pids[index], signal.SIGKILL)
    assert "replica" in events[-1] and "retry" in events[-1] and '"error"' in events[-1]
    deadline = time.monotonic() + 90
    while True:  # Ray Serve restarts it; meanwhile requests go to the other replica or wait
        assert _complete(ray_server.url, "again", 4).status_code == 200
        now = httpx.get(f"{ray_server.url}/replicas", timeout=60).json()["pids"]
        if now[index] != pids[index] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert now[index] != pids[index]


def test_replica_requests_are_refused_before_starting(built, monkeypatch):
    with pytest.raises(ValueError, match="needs 3 CPU cores .* 2 are available"):
        check_replicas(built, EngineOptions(), 3, 2)
    monkeypatch.setattr(replicas, "replica_memory_bytes", lambda *_: 1 << 50)
    with pytest.raises(ValueError, match="GiB are free; ask for fewer replicas"):
        check_replicas(built, EngineOptions(), 2, 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(replicas.ToolMissingError, match=r'pip install "mlc\[ray\]"'):
        replicas.import_ray()


def test_routing_balancing_and_metric_sums():
    system = "S" * 300
    first = json.dumps(
        {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Q1"}]}
    )
    other = first.replace("Q1", "Q2")
    keys, other_keys = (
        routing_keys("/v1/chat/completions", first.encode()),
        routing_keys("/v1/chat/completions", other.encode()),
    )
    assert len(keys) == 1 and keys == other_keys  # 256 characters in common, no more
    assert routing_keys("/v1/models", b"") == [] and routing_keys("/v1/completions", b"{") == []
    assert len(routing_keys("/v1/completions", json.dumps({"prompt": "x" * 5000}).encode())) == 3
    balancer = Balancer(2)
    assert [balancer.choose([]) for _ in range(3)] == [0, 1, 0]
    assert balancer.choose(["a"]) == 1 and balancer.choose(["a"]) == 1
    assert balancer.choose(["a", "b"]) == 1  # the longest known start, "a", was on 1
    balancer.in_flight[1] = 2  # two more than replica 0: the start's replica is too busy
    assert balancer.choose(["a"]) == 0
    texts = [
        "# HELP x_total X.\n# TYPE x_total counter\nx_total 2\n"
        '# HELP h_seconds H.\n# TYPE h_seconds histogram\nh_seconds_bucket{le="1"} 1\n',
        "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n",
    ]
    summed = sum_metrics(texts)
    assert "x_total 5" in summed and 'h_seconds_bucket{le="1"} 1' in summed
    assert summed.count("# TYPE x_total counter") == 1
