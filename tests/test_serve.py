"""`mlc serve` as a real process on a loopback port, driven by the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_structured_output import PERSON
from tokenizers import Tokenizer

from mlc import ChatModule, GenerationConfig

GQA = {"num_key_value_heads": 2}
MODEL = "gqa-q0f32"
KEY = "sk-test-key"


class Server:
    """`mlc serve` in a subprocess; stopped with SIGTERM (a graceful shutdown). Its output goes
    to a pipe, or to the file `log` (for chatty servers, whose output could fill a pipe)."""

    def __init__(self, model: Path, *args: str, log: Path | None = None):
        self.log = log
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = False
        command = [sys.executable, "-m", "mlc.cli", "serve", str(model), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, "--log-level", "warning", *args],
            stdout=log.open("w") if log else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("mlc serve did not become healthy")

    def interrupt(self) -> None:
        """Ask for a graceful shutdown (uvicorn forces one on a second signal)."""
        self.stopping = True
        self.proc.send_signal(signal.SIGINT)

    def metrics(self, headers: dict | None = None) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers=headers).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self) -> tuple[int, str]:
        if not self.stopping:
            self.interrupt()
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return code, self.log.read_text() if self.log else self.proc.stdout.read()


@pytest.fixture(scope="module")
def built(tiny_builds) -> Path:
    return tiny_builds.get("gqa", **GQA)[1]


def serving(model: Path, *args: str):
    """A module's server: yields it, then checks it shut down cleanly."""
    srv = Server(model, *args)
    yield srv
    code, output = srv.stop()
    assert code == 0, output


def openai_client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def server(built):
    yield from serving(built, "--kv-cache-tokens", "4096")


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai_client(server)


def wait_until_idle(server: Server) -> dict[str, float]:
    deadline = time.monotonic() + 60
    while True:
        metrics = server.metrics()
        idle = metrics["mlc_running_sequences"] == metrics["mlc_queue_length"] == 0
        # Pages left in use are cached prefixes' (whose count is an upper bound: shared once).
        cached = metrics["mlc_kv_cache_pages_used"] <= metrics["mlc_prefix_cache_pages"]
        if (idle and cached) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


PROMPTS = [f"Tell me about robot number {i}." for i in range(20)]


@pytest.fixture(scope="module")
def sequential_answers(built) -> dict[str, str]:
    """Greedy answers of `ChatModule`, one fresh conversation per prompt."""
    cm = ChatModule(str(built))
    answers = {}
    for prompt in PROMPTS:
        cm.reset_chat()
        answers[prompt] = cm.generate(prompt, GenerationConfig(temperature=0, max_tokens=20))
    return answers


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["gqa-q0f32"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert "openapi" in httpx.get(f"{server.url}/openapi.json").json()


def test_greedy_chat_equals_chat_module(client, sequential_answers):
    prompt = PROMPTS[0]
    messages = [{"role": "user", "content": prompt}]
    reply = client.chat.completions.create(
        model="gqa-q0f32", messages=messages, temperature=0, max_tokens=20
    )
    assert reply.choices[0].message.content == sequential_answers[prompt]
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(
        model="gqa-q0f32",
        messages=messages,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == sequential_answers[prompt]
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_concurrent_streaming_clients_each_get_their_own_completion(
    server, client, sequential_answers
):
    def ask(prompt: str) -> str:
        stream = client.chat.completions.create(
            model="gqa-q0f32",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=20,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = dict(zip(PROMPTS, pool.map(ask, PROMPTS), strict=True))
    assert answers == sequential_answers
    metrics = wait_until_idle(server)
    assert metrics["mlc_kv_cache_pages_used"] == 0


def test_completions_sampling_options_n_and_logprobs(client):
    common = dict(model="gqa-q0f32", prompt="Once upon a time", max_tokens=8)
    sampled = dict(temperature=0.9, top_p=0.9, seed=5, n=3, **common)
    extra = {"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1}
    first = client.completions.create(**sampled, extra_body=extra)
    again = client.completions.create(**sampled, extra_body=extra)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert first.usage.completion_tokens <= 24

    scored = client.completions.create(
        **common, temperature=0, logprobs=3, presence_penalty=0.5, frequency_penalty=0.5
    )
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == scored.usage.completion_tokens
    assert all(len(top) <= 3 for top in logprobs.top_logprobs)

    chat = client.chat.completions.create(
        model="gqa-q0f32",
        messages=[{"role": "user", "content": "Hi"}],
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert content and all(len(entry.top_logprobs) == 2 for entry in content)
    assert all(entry.logprob <= 0 for entry in content)
    assert all(entry.bytes and all(0 <= b < 256 for b in entry.bytes) for entry in content)

    greedy = client.completions.create(**common, temperature=0).choices[0].text
    streamed = ["", ""]
    for chunk in client.completions.create(**common, temperature=0, n=2, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == [greedy, greedy]


def test_stop_string_cuts_the_answer(client):
    # ignore_eos: the random model must not end before there is text to stop in.
    common = dict(
        model="gqa-q0f32",
        prompt="The quick",
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**common).choices[0]
    assert len(full.text) >= 4, full.text
    stop = full.text[2:4]
    cut = client.completions.create(**common, stop=[stop]).choices[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"


CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        (CHAT, b"{not json", 400, None),
        (CHAT, b"[1, 2]", 400, None),
        (CHAT, {"messages": "hi"}, 400, "messages"),
        (CHAT, {"messages": HI, "temperature": "hot"}, 400, "temperature"),
        (CHAT, {"messages": HI, "max_tokens": -1}, 400, "max_tokens"),
        (CHAT, {"messages": HI, "n": 0}, 400, "n"),
        (CHAT, {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
        (CHAT, {"model": "gpt-9", "messages": HI}, 404, "model"),
        (CHAT, {"messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages"),
        ("/v1/completions", {"prompt": "word " * 400}, 400, "prompt"),
        ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop"),
        ("/v1/completions", {"prompt": "x" * (2 << 20)}, 413, None),
        (CHAT, {"messages": HI, "frobnicate": 1}, 400, "frobnicate"),
        (CHAT, {"messages": HI, "tools": [{"type": "function"}]}, 400, "tools.0.function"),
        (CHAT, {"messages": HI, "store": True}, 400, "store"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": "x", "tool_call_id": "1"}]},
            400,
            "messages.0.tool_call_id",
        ),
        ("/v1/completions", {"prompt": "x", "suffix": "y"}, 400, "suffix"),
        (CHAT, {"messages": HI, "response_format": {"type": "xml"}}, 400, "response_format"),
        (
            CHAT,
            {"messages": HI, "response_format": schema_format({"type": 5})},
            400,
            "response_format",
        ),
        (CHAT, {"messages": HI, "logit_bias": {"99999": 5}}, 400, "logit_bias"),
        (CHAT, {"messages": HI, "logit_bias": {"1": 500}}, 400, "logit_bias.1"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{server.url}{path}", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert error["param"] == param
    assert httpx.get(f"{server.url}/health").status_code == 200


@st.composite
def request_bodies(draw, schema: dict, components: dict):
    """Objects with the schema's fields (often valid, sometimes of the wrong type) and extras."""
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=6,
    )
    messages = st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "bad"]), "content": text}
        ),
        max_size=3,
    )
    plausible = {
        "messages": messages,
        "prompt": text | st.lists(st.integers(-5, 400), max_size=5),
        "max_tokens": st.integers(-3, 12),
        "n": st.integers(-1, 3),
        "model": st.sampled_from(["gqa-q0f32", "other", ""]),
        "stop": text | st.lists(text, max_size=20),
        "stream": st.booleans(),
        "logprobs": st.booleans() | st.integers(-1, 25),
        "top_logprobs": st.integers(-1, 25),
        "temperature": st.floats(-1, 3) | st.sampled_from([1e-300, 5e-324, 2.0]),
        "seed": st.integers(-10, 2**64),
    }
    body = {}
    for name in schema.get("properties", {}):
        if draw(st.booleans()) or name in schema.get("required", ()):
            strategy = plausible.get(name, json_values)
            body[name] = draw(strategy if draw(st.integers(0, 4)) else json_values)
    if draw(st.booleans()):
        body[draw(text)] = draw(json_values)
    return body


def fuzz_endpoint(url: str, schema: dict, components: dict) -> None:
    @settings(
        max_examples=60,
        deadline=None,
        database=None,  # no example database left in the working tree
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=request_bodies(schema, components))
    def check(body):
        # Python's JSON writes inf and nan as Infinity and NaN, which Python's reader accepts.
        content = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        response = httpx.post(url, content=content, headers=headers, timeout=60)
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()

    check()


def test_fuzzed_requests_from_the_openapi_document_never_get_a_5xx(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    components = document["components"]["schemas"]
    posts = [(path, ops["post"]) for path, ops in document["paths"].items() if "post" in ops]
    assert {path for path, _ in posts} == {"/v1/chat/completions", "/v1/completions"}
    for path, operation in posts:
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        fuzz_endpoint(f"{server.url}{path}", components[ref.rsplit("/", 1)[-1]], components)
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert wait_until_idle(server)["mlc_kv_cache_pages_used"] == 0


def long_request(max_tokens: int) -> dict:
    return {"prompt": "Once", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}


SHORT = {"prompt": "Hi", "max_tokens": 4}


@pytest.fixture(scope="module")
def long_context(tiny_builds) -> Path:
    """A tiny model with a 4096-token window: a long answer keeps the batch busy for seconds."""
    return tiny_builds.get("gqa-4k", max_position_embeddings=4096, **GQA)[1]


def test_client_disconnect_cancels_and_frees_pages(long_context):
    """A client that leaves a 4000-token stream after its first event stops the generation
    (far fewer tokens than asked) and its KV pages return to the cache."""
    srv = Server(long_context)
    try:
        generated = srv.metrics()["mlc_generation_tokens_total"]
        url = f"{srv.url}/v1/completions"
        with httpx.stream("POST", url, json=long_request(4000), timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert srv.metrics()["mlc_kv_cache_pages_used"] > 0
        metrics = wait_until_idle(srv)
        assert metrics["mlc_kv_cache_pages_used"] == 0
        assert metrics["mlc_cancelled_requests_total"] == 1
        assert metrics["mlc_generation_tokens_total"] - generated < 4000
    finally:
        code, output = srv.stop()
    assert code == 0, output


def test_prefix_cache_reuses_a_prompt_start_and_reports_it(server):
    """A second request that starts with the first one's 100 tokens prefills from the last
    whole 64-token chunk they share: the same answer, its usage and /metrics say so."""
    before = wait_until_idle(server)
    prompt = [(7 * i) % 300 + 3 for i in range(100)]
    url = f"{server.url}/v1/completions"
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0}
    first = httpx.post(url, json=body, timeout=60).json()
    second = httpx.post(url, json=body, timeout=60).json()
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 64}
    after = wait_until_idle(server)
    assert after["mlc_prefix_cache_hits_total"] - before["mlc_prefix_cache_hits_total"] == 1
    reused = after["mlc_prefix_cache_tokens_reused_total"]
    assert reused - before["mlc_prefix_cache_tokens_reused_total"] == 64
    assert after["mlc_prefix_cache_entries"] >= 1 and after["mlc_kv_cache_pages_used"] >= 4


def test_prefix_cache_on_a_sliding_window_model_is_refused(tiny_builds):
    """Sliding-window layers cannot share KV prefixes: asking for the cache is an error that
    names the fix, and by default the server runs without it."""
    from mlc.runtime.serve.service import EngineOptions, ServedModel

    # The sliding-window tests' build.
    settings = {"model_type": "mistral", "num_key_value_heads": 2, "sliding_window": 16}
    chunk = {"prefill_chunk_size": 8}
    _, built = tiny_builds.get("mistral-window", build_options=chunk, **settings)
    with pytest.raises(ValueError, match="--no-prefix-cache"):
        ServedModel(built, EngineOptions(prefix_cache=True))
    served = ServedModel(built, EngineOptions())
    assert served.engine.prefix_cache is None
    served.engine.shutdown()


def test_speculative_serving_gives_the_same_answers(server, built):
    """`--speculative prompt-lookup`: concurrent greedy completions of prompts that repeat
    themselves equal the plain server's, and /metrics counts the drafts."""
    prompts = [[3 + (5 * i + j) % 9 for j in range(30)] for i in range(6)]

    def answers(srv: Server) -> list[str]:
        def one(prompt):
            body = {"prompt": prompt, "max_tokens": 24, "temperature": 0}
            return httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()

        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            return [r["choices"][0]["text"] for r in pool.map(one, prompts)]

    want = answers(server)
    spec = Server(built, "--speculative", "prompt-lookup", "--num-draft-tokens", "4")
    try:
        assert answers(spec) == want
        metrics = wait_until_idle(spec)
        drafted = metrics["mlc_speculative_draft_tokens_total"]
        assert drafted >= metrics["mlc_speculative_accepted_tokens_total"] >= 0
        assert metrics["mlc_speculative_passes_total"] >= (drafted > 0)
    finally:
        code, output = spec.stop()
    assert code == 0, output


def test_speculation_on_a_sliding_window_model_is_refused(tiny_builds):
    from mlc.runtime.serve.service import EngineOptions, ServedModel

    settings = {"model_type": "mistral", "num_key_value_heads": 2, "sliding_window": 16}
    chunk = {"prefill_chunk_size": 8}
    _, built = tiny_builds.get("mistral-window", build_options=chunk, **settings)
    with pytest.raises(ValueError, match="sliding-window.*serve it without --speculative"):
        ServedModel(built, EngineOptions(speculative="prompt-lookup"))


def test_api_key_full_queue_order_and_graceful_shutdown(long_context):
    """A batch of one and a queue of one: while a long request runs, a second one waits and a
    third gets a 429; cancelling the first admits the second; SIGINT lets a running request
    finish."""
    srv = Server(long_context, "--max-batch-size", "1", "--max-queue", "1", "--api-key", KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{srv.url}/v1/completions"
    try:
        assert httpx.get(f"{srv.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(f"{srv.url}/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(url, json=SHORT).status_code == 401
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        assert httpx.get(f"{srv.url}/v1/models", headers=auth).status_code == 200

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with httpx.stream(
                "POST", url, json=long_request(4000), headers=auth, timeout=60
            ) as running:
                lines = running.iter_lines()  # (kept: a dropped iterator closes the stream)
                assert next(lines).startswith("data: ")  # it fills the batch
                queued = pool.submit(httpx.post, url, json=SHORT, headers=auth, timeout=60)
                while srv.metrics(auth)["mlc_queue_length"] < 1:
                    assert not queued.done(), queued.result().text
                    time.sleep(0.01)
                full = httpx.post(url, json=SHORT, headers=auth, timeout=60)
                assert full.status_code == 429 and full.headers["retry-after"]
                assert full.json()["error"]["code"] == "overloaded"
            # The long request's client went away: the queued one takes its place.
            assert queued.result().status_code == 200

        with httpx.stream("POST", url, json=long_request(400), headers=auth, timeout=60) as last:
            lines = last.iter_lines()
            assert next(lines).startswith("data: ")
            srv.interrupt()  # graceful: the running stream still completes
            events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    finally:
        code, output = srv.stop()
    assert code == 0, output


def test_kv_cache_exhausted_is_a_503_and_shutdown_timeout_ends_streams_with_an_error(
    long_context,
):
    """Room in the KV cache for one full-context request and no patience in the queue: a second
    request gets a 503; a shutdown with no grace ends the running stream with an error event."""
    srv = Server(
        long_context,
        *("--max-batch-size", "2", "--kv-cache-tokens", "4096"),
        *("--queue-timeout", "0", "--shutdown-timeout", "0"),
    )
    url = f"{srv.url}/v1/completions"
    try:
        with httpx.stream("POST", url, json=long_request(5000), timeout=60) as running:
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")  # admitted: it reserves every KV page
            refused = httpx.post(url, json=SHORT, timeout=60)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "KV cache" in refused.json()["error"]["message"]
            srv.interrupt()
            events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        last = json.loads(events[-2][6:])
        assert "shut down" in last["error"]["message"], last
    finally:
        code, output = srv.stop()
    assert code == 0, output


def test_binding_beyond_localhost_without_a_key_warns(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlc.cli", "serve", str(tmp_path / "missing"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1
    assert "without --api-key" in result.stderr
    assert "model directory not found" in result.stderr


def test_json_schema_answers_validate_whole_and_streamed(client):
    body = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format=schema_format(PERSON),
        temperature=1.0,
        max_tokens=200,
    )
    result = client.chat.completions.create(**body, n=4)
    streamed = client.chat.completions.create(**body, stream=True, seed=5)
    texts = [c.message.content for c in result.choices]
    texts.append("".join(c.choices[0].delta.content or "" for c in streamed if c.choices))
    assert all(c.finish_reason == "stop" for c in result.choices)
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)
    # JSON mode: any object. Unbounded, so an answer may run to max_tokens; those that end parse.
    body["response_format"] = {"type": "json_object"}
    ended = [c for c in client.chat.completions.create(**body, n=4).choices]
    ended = [c for c in ended if c.finish_reason == "stop"]
    assert ended
    for choice in ended:
        assert isinstance(json.loads(choice.message.content), dict)


def test_forced_spans_are_prefilled_and_answers_equal_chat_module(server, client, built):
    """Jump-forward in the batch engine: a seeded JSON Schema answer is the one `ChatModule`
    gives (which feeds forced spans in one prefill call and samples nothing for them), and the
    engine prefilled more tokens than the prompt held."""
    messages = [{"role": "user", "content": "Describe a person."}]
    before = wait_until_idle(server)["mlc_prefill_tokens_total"]
    result = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        response_format=schema_format(PERSON),
        temperature=1.0,
        max_tokens=200,
        seed=7,
    )
    prefilled = wait_until_idle(server)["mlc_prefill_tokens_total"] - before
    assert prefilled > result.usage.prompt_tokens
    cm = ChatModule(str(built))
    fmt = {"type": "json_schema", "schema": PERSON}
    config = GenerationConfig(temperature=1.0, max_tokens=200, seed=7, response_format=fmt)
    assert cm.generate("Describe a person.", config) == result.choices[0].message.content
    assert cm.last_stats.forced_tokens > 0


def test_logit_bias_forces_a_token(client, built):
    forced = Tokenizer.from_file(str(built / "tokenizer.json")).token_to_id("a")
    result = client.completions.create(
        model=MODEL,
        prompt="x",
        max_tokens=6,
        temperature=1.0,
        logit_bias={str(forced): 100},
        extra_body={"ignore_eos": True},
    )
    assert result.choices[0].text == "a" * 6


def test_a_seed_repeats_answers_across_requests_and_chat_module(client, built):
    prompt = "Tell me about robot number 3."
    messages = [{"role": "user", "content": prompt}]
    body = dict(model=MODEL, messages=messages, temperature=1.0, max_tokens=12)
    first, again = (client.chat.completions.create(**body, n=2, seed=42) for _ in range(2))
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1]  # choice i is seeded with seed + i
    cm = ChatModule(str(built))
    config = GenerationConfig(temperature=1.0, max_tokens=12, seed=42)
    assert cm.generate(prompt, config) == texts[0]
    unseeded = client.chat.completions.create(**body, n=3)
    assert len({c.message.content for c in unseeded.choices}) > 1


def test_accepted_no_op_values_and_a_lenient_server(server, built):
    body = {"messages": HI, "max_tokens": 1, "store": False, "tools": [], "modalities": ["text"]}
    assert httpx.post(f"{server.url}{CHAT}", json=body).status_code == 200
    lenient = Server(built, "--lenient")
    try:
        unknown = httpx.post(f"{lenient.url}{CHAT}", json={**body, "frobnicate": 1})
        assert unknown.status_code == 200, unknown.text
        old = httpx.post(f"{lenient.url}{CHAT}", json={**body, "functions": [{"name": "f"}]})
        assert old.status_code == 400 and old.json()["error"]["param"] == "functions"
    finally:
        code, output = lenient.stop()
    assert code == 0, output
