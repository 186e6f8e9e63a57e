"""`mlc serve --replicas N`: N engine replicas behind Ray Serve's HTTP proxy.

Ray Serve runs one `Router` deployment (its HTTP proxy hands it every request) and N engine
deployments of one replica each. An engine replica is the whole single-process server
(`create_app` over its own `ServedModel`, one CPU thread), called in-process through ASGI. The
router sends a request to the engine that last served the longest prompt start it shares with
an earlier request (that engine's prefix cache likely holds it: prefix-aware routing) unless
that engine has more than `AFFINITY_SLACK` requests in flight above the least loaded one;
otherwise, and for a new start, to the least loaded engine. `/metrics` sums the engines'
metrics and adds `mlc_replicas`. Ray Serve restarts an engine whose process dies; the requests
it was serving end with a 503 error (a stream, with an error event) that says so, and later
requests wait for the restarted engine.
"""

# No `from __future__ import annotations`: Ray pickles the deployments by value into their
# processes, where FastAPI could not resolve string annotations (`Request`).
import asyncio
import collections
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..chat_config import ChatConfig
from ..compiled_model import model_head_dim
from ..host import ToolMissingError
from ..tensor_cache import TensorCacheIndex
from .errors import error_body
from .middleware import APIKeyMiddleware
from .service import EngineOptions, kv_cache_tokens

APP_NAME = "mlc"
# Prompt starts (characters of the prompt text, or of its messages or token ids as JSON) that
# routing remembers: from about a prefill chunk (the prefix cache's grain) up.
PREFIX_CHARS = (256, 1024, 4096, 16384)
AFFINITY_SLACK = 1  # requests in flight an engine may have above the least loaded one
MAX_AFFINITIES = 10_000  # prompt starts remembered, least recently used dropped first


def import_ray() -> tuple[Any, Any]:
    """(ray, ray.serve), or a `ToolMissingError` with the install command."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ToolMissingError(
            'mlc serve --replicas runs on Ray Serve, which is not installed: pip install "mlc[ray]"'
        ) from err
    return ray, serve


def replica_memory_bytes(model_dir: Path, options: EngineOptions) -> int:
    """What one engine replica holds: the weights and its KV cache."""
    config = ChatConfig.load(model_dir)
    index = TensorCacheIndex.load(model_dir, config.rebuild_hint(model_dir))
    model = config.model_config
    layers = model.get("num_hidden_layers", 0)
    kv_heads = model.get("num_key_value_heads") or model.get("num_attention_heads", 0)
    itemsize = 2 if model.get("kv_cache_dtype") == "float16" else 4
    per_token = layers * 2 * kv_heads * model_head_dim(model) * itemsize
    return index.param_bytes + kv_cache_tokens(options, config) * per_token


def check_replicas(model_dir: Path, options: EngineOptions, replicas: int, cpus: float) -> None:
    """Refuse, before starting anything, more replicas than the cores (one each) or the
    memory can hold."""
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, not {replicas}")
    if replicas > cpus:
        raise ValueError(
            f"--replicas {replicas} needs {replicas} CPU cores (one per replica), but "
            f"{cpus:g} are available; ask for at most {int(cpus)}"
        )
    need = replicas * replica_memory_bytes(model_dir, options)
    free = psutil.virtual_memory().available
    if need > free:
        raise ValueError(
            f"--replicas {replicas} needs about {need / 2**30:.1f} GiB (weights and KV cache "
            f"per replica), but {free / 2**30:.1f} GiB are free; ask for fewer replicas or a "
            "smaller --kv-cache-tokens"
        )


def routing_keys(path: str, body: bytes) -> list[str]:
    """Hashes of a request's prompt start at each length in `PREFIX_CHARS` it reaches (the
    whole prompt where it is shorter than the first), shortest first; none for requests
    without a prompt."""
    if path not in ("/v1/chat/completions", "/v1/completions"):
        return []
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(request, dict):
        return []
    prompt = request.get("messages") if "messages" in request else request.get("prompt")
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    lengths = [n for n in PREFIX_CHARS if n <= len(text)] or [len(text)]
    return [hashlib.sha1(text[:n].encode()).hexdigest() for n in lengths]


class Balancer:
    """Which engine gets a request: the engine that last served the longest start it shares
    with an earlier request, within `AFFINITY_SLACK` of the least loaded; else the least
    loaded (the one after the last chosen, on ties). A conversation's turns so stay on one
    engine, while new conversations that share only a system prompt spread out."""

    def __init__(self, engines: int):
        self.in_flight = [0] * engines
        self.affinity: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._next = 0

    def choose(self, keys: list[str]) -> int:
        least = min(self.in_flight)
        engine = next((self.affinity[k] for k in reversed(keys) if k in self.affinity), None)
        if engine is None or self.in_flight[engine] > least + AFFINITY_SLACK:
            count = len(self.in_flight)
            order = [(self._next + i) % count for i in range(count)]
            engine = next(i for i in order if self.in_flight[i] == least)
            self._next = (engine + 1) % count
        for key in keys:
            self.affinity[key] = engine
            self.affinity.move_to_end(key)
        while len(self.affinity) > MAX_AFFINITIES:
            self.affinity.popitem(last=False)
        return engine


def sum_metrics(texts: list[str]) -> str:
    """Prometheus texts of several engines as one: each sample summed over the engines."""
    comments: dict[str, list[str]] = {}
    samples: dict[str, float] = {}
    order: list[str] = []
    for text in texts:
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                name = line.split()[2]
                comments.setdefault(name, [])
                if line not in comments[name]:
                    comments[name].append(line)
                continue
            sample, value = line.rsplit(" ", 1)
            if sample not in samples:
                order.append(sample)
                samples[sample] = 0.0
            samples[sample] += float(value)
    lines: list[str] = []
    seen: set[str] = set()
    for sample in order:
        name = sample.split("{")[0]
        family = next((f for f in comments if name == f or name.startswith(f + "_")), name)
        if family not in seen:
            seen.add(family)
            lines += comments.get(family, [])
        value = samples[sample]
        lines.append(f"{sample} {int(value) if value.is_integer() else value:g}")
    return "\n".join(lines) + "\n"


async def asgi_call(app, method: str, path: str, query: bytes, headers, body: bytes):
    """Call an ASGI app in-process: yields (status, headers) once, then the body's chunks."""
    queue: asyncio.Queue = asyncio.Queue()
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the response streams
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await queue.put(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.encode().lower(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    task = asyncio.create_task(app(scope, receive, send))
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                task.result()  # the app ended without a complete response: its error
                raise RuntimeError(f"{method} {path} ended without a response")
            message = getter.result()
            if message["type"] == "http.response.start":
                yield message["status"], [(k.decode(), v.decode()) for k, v in message["headers"]]
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return
    finally:
        if not task.done():
            task.cancel()


def build_application(
    model_dir: Path, engine: EngineOptions, replicas: int, api_key: str | None, server
) -> Any:
    """The Ray Serve application: the router bound to `replicas` engine deployments."""
    _, serve = import_ray()

    @serve.deployment(
        num_replicas=1,
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": {"TVM_NUM_THREADS": "1"}}},
        max_ongoing_requests=1024,
        health_check_period_s=2,
        graceful_shutdown_timeout_s=server.shutdown_timeout,
    )
    class Engine:
        def __init__(self, index: int):
            from .app import create_app
            from .service import ServedModel

            self.index = index
            served = ServedModel(Path(model_dir), engine)
            self.app = create_app(
                served, api_key, server.max_body_bytes, server.shutdown_timeout, server.lenient
            )

        async def handle(self, method: str, path: str, query: bytes, headers, body: bytes):
            async for item in asgi_call(self.app, method, path, query, headers, body):
                yield item

        async def metrics(self, headers) -> str:
            chunks = [c async for c in asgi_call(self.app, "GET", "/metrics", b"", headers, b"")]
            return b"".join(chunks[1:]).decode()

        def pid(self) -> int:
            return os.getpid()

    app = FastAPI(title="mlc serve (replicas)")
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096)
    @serve.ingress(app)
    class Router:
        def __init__(self, *engines):
            self.engines = list(engines)
            self.balancer = Balancer(len(engines))

        @app.get("/health")
        async def health(self) -> dict:
            return {"status": "ok", "replicas": len(self.engines)}

        @app.get("/metrics", response_class=PlainTextResponse)
        async def metrics(self, request: Request) -> str:
            headers = list(request.headers.items())
            texts = await asyncio.gather(
                *(e.metrics.remote(headers) for e in self.engines), return_exceptions=True
            )
            alive = [t for t in texts if isinstance(t, str)]
            replicas = (
                "# HELP mlc_replicas Engine replicas answering.\n# TYPE mlc_replicas gauge\n"
                f"mlc_replicas {len(alive)}\n"
            )
            return replicas + sum_metrics(alive)

        @app.get("/replicas")
        async def pids(self) -> dict:
            """Each engine replica's process id (for operators and tests)."""
            return {"pids": await asyncio.gather(*(e.pid.remote() for e in self.engines))}

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def forward(self, path: str, request: Request):
            body = await request.body()
            path = "/" + path
            index = self.balancer.choose(routing_keys(path, body))
            self.balancer.in_flight[index] += 1
            headers = [(k, v) for k, v in request.headers.items() if k != "host"]
            stream = (
                self.engines[index]
                .options(stream=True)
                .handle.remote(request.method, path, request.url.query.encode(), headers, body)
            )
            try:
                status, response_headers = await stream.__anext__()
            except Exception as err:
                self.balancer.in_flight[index] -= 1
                return JSONResponse(error_body(503, _died(index, err)), 503)
            kept = {
                k: v
                for k, v in response_headers
                if k.lower() not in ("content-length", "transfer-encoding")
            }
            kept["x-mlc-replica"] = str(index)
            event_stream = kept.get("content-type", "").startswith("text/event-stream")

            async def body_chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in stream:
                        yield chunk
                except Exception as err:
                    if event_stream:
                        yield f"data: {json.dumps(error_body(503, _died(index, err)))}\n\n".encode()
                finally:
                    self.balancer.in_flight[index] -= 1

            return StreamingResponse(body_chunks(), status_code=status, headers=kept)

    engines = [Engine.options(name=f"mlc-engine-{i}").bind(i) for i in range(replicas)]
    return Router.bind(*engines)


def _died(index: int, err: Exception) -> str:
    return (
        f"engine replica {index} failed while serving this request ({type(err).__name__}); "
        "Ray Serve restarts it: retry the request"
    )


def serve_replicas(
    model_dir: Path, server, engine: EngineOptions, replicas: int, ray_address: str | None
) -> None:
    """Start (or join) a Ray cluster, run the application until SIGINT/SIGTERM."""
    ray, serve = import_ray()
    if ray_address is None:
        check_replicas(model_dir, engine, replicas, len(os.sched_getaffinity(0)))
        ray.init(
            num_cpus=replicas,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    else:
        ray.init(address=ray_address, log_to_driver=False)
        check_replicas(model_dir, engine, replicas, ray.cluster_resources().get("CPU", 0))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": server.host, "port": server.port})
        application = build_application(model_dir, engine, replicas, server.api_key, server)
        level = {"trace": "DEBUG"}.get(server.log_level, server.log_level.upper())
        serve.run(application, name=APP_NAME, route_prefix="/", logging_config={"log_level": level})
        print(
            f"Serving {Path(model_dir).name} on http://{server.host}:{server.port}/v1 with "
            f"{replicas} replicas (Ray Serve)",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
        # In-flight requests get `--shutdown-timeout` seconds to finish.
        deleting = threading.Thread(target=serve.delete, args=(APP_NAME,), daemon=True)
        deleting.start()
        deleting.join(server.shutdown_timeout + 10)
    finally:
        ray.shutdown()  # a cluster we started ends with its processes; one we joined goes on
