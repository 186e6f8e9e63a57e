"""The chat page (`mlc web`, `runtime/web/chat/`) in headless Chromium (Debian's `chromium`,
driven by Playwright).

With `--enable-unsafe-webgpu` Chromium exposes SwiftShader's Vulkan as a WebGPU adapter: the
page loads the tiny q4f32_1 `webgpu` build and chats, and its greedy answers (text, token ids,
token counts; two turns) equal `ChatModule`'s on the CPU build of the same weights. Without the
flag there is no adapter and the page says "WebGPU not available". The page's tokenizer is
compared with the `tokenizers` library, its conversation rendering with the Python templates.

Needs `.ci/system-deps` (chromium, Deno for bundling the TVM runtime, emcc, Mesa) and the
`test` extra (playwright); a missing piece fails the test.
"""

from __future__ import annotations

import random
import re
import select
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from tokenizer_samples import (
    CONVERSATION,
    EXTRA_SAMPLES,
    LLAMA3_STYLE,
    tokenizer_samples,
    tokenizer_variants,
)
from tokenizers import Tokenizer

from mlc import ChatModule, GenerationConfig
from mlc.cli import main
from mlc.runtime.chat_format import ChatFormatError, turn_rules
from mlc.runtime.chat_template import JinjaChatTemplate
from mlc.runtime.conversation import TEMPLATES

CHROMIUM = "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; the rest keeps it off the (closed) network.
QUIET = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Enough for an adapter without a GPU: Chromium's WebGPU then runs on its bundled SwiftShader.
WEBGPU = ["--enable-unsafe-webgpu"]
LOAD_TIMEOUT_MS = 120_000
STARTUP_TIMEOUT_S = 300
SETTLED = "['ready', 'error', 'unavailable'].includes(document.body.dataset.state)"
# Records what the page shows while it loads and streams (before its own scripts run).
RECORDER = """
window.__progress = [];
window.__streamed = 0;
new MutationObserver((mutations) => {
  for (const m of mutations) {
    const el = m.target.nodeType === Node.TEXT_NODE ? m.target.parentElement : m.target;
    if (el?.id === "progress-text") window.__progress.push(el.textContent);
    if (el?.classList?.contains("assistant")) window.__streamed += 1;
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""
STATS = re.compile(
    r"prefill: ([\d.]+) tok/s \((\d+) tokens\), decode: ([\d.]+) tok/s \((\d+) tokens\), "
    r"finish: (\w+)"
)


@pytest.fixture(scope="module")
def builds(tiny_builds):
    """(CPU build, webgpu build) of the same tiny weights, q4f32_1."""
    _, cpu_dir = tiny_builds.get("llama", "q4f32_1")
    _, web_dir = tiny_builds.get("llama", "q4f32_1", build_options={"target": "webgpu"})
    return cpu_dir, web_dir


@pytest.fixture(scope="module")
def site(builds):
    """`mlc web` serving the webgpu build (with the chatml template) on a free loopback port."""
    cmd = [sys.executable, "-m", "mlc.cli", "web", str(builds[1]), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--conv-template", "chatml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # It prints its URL once it listens (after bundling the runtime: esbuild's download
        # from npm the first time on a machine).
        if not select.select([proc.stdout], [], [], STARTUP_TIMEOUT_S)[0]:
            raise TimeoutError(f"mlc web printed nothing in {STARTUP_TIMEOUT_S} s")
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, f"mlc web printed {line!r}; stderr: {proc.stderr.read() if not line else ''}"
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def webgpu_browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET + WEBGPU)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def plain_browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET)
    yield browser
    browser.close()


def open_page(browser, url: str):
    """A new page at `url`, once it is ready, failed or without WebGPU; uncaught errors go to
    `page.errors`."""
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(error))
    page.add_init_script(RECORDER)
    page.goto(url)
    page.wait_for_function(SETTLED, timeout=LOAD_TIMEOUT_MS)
    return page


def ask(page, prompt: str, max_tokens: int) -> tuple[str, re.Match]:
    """Send `prompt` greedily; the answer shown once generation has ended, and the stats."""
    count = page.locator(".message.assistant").count()
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_function(
        f"document.querySelectorAll('.message.assistant').length === {count + 1} && "
        "document.body.dataset.state === 'ready'",
        timeout=LOAD_TIMEOUT_MS,
    )
    stats = page.inner_text("#stats")
    match = STATS.fullmatch(stats)
    assert match, stats
    return page.locator(".message.assistant").nth(count).text_content(), match


def test_page_chats_as_chat_module(site, webgpu_browser, builds):
    page = open_page(webgpu_browser, site)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#notice")
    progress = page.evaluate("window.__progress")
    assert any("weight shard 1/1" in p for p in progress), progress
    assert any("Checking the sha256" in p for p in progress), progress
    assert any("shader" in p for p in progress), progress
    assert "swiftshader" in page.inner_text("#device")

    reference = ChatModule(builds[0], conv_template="chatml")
    config = GenerationConfig(temperature=0, max_tokens=24)
    streamed = []
    # The first answer ends at a stop token, the second at max_tokens (its last token is not
    # in the KV cache yet: the third turn's prefill starts with it).
    for prompt in ["Once upon a time", "Tell me more about the little robot.", "And then?"]:
        page.evaluate("window.__streamed = 0")
        answer, stats = ask(page, prompt, 24)
        expected = reference.generate(prompt, config)
        assert answer == expected
        assert page.evaluate("window.mlcChat.session.lastOutputIds") == reference.last_output_ids
        ref = reference.last_stats
        assert (int(stats[2]), int(stats[4]), stats[5]) == (
            ref.prefill_tokens,
            ref.decode_tokens,
            ref.finish_reason,
        )
        assert float(stats[1]) > 0 and float(stats[3]) > 0
        streamed.append(page.evaluate("window.__streamed"))
    # The second answer (24 tokens) arrived in pieces, not at the end.
    assert streamed[1] > 3, streamed
    assert page.errors == []


def test_stop_button_ends_the_answer(site, webgpu_browser, builds):
    prompt = "Write a long story."
    reference = ChatModule(builds[0], conv_template="chatml")
    reference.generate(prompt, GenerationConfig(temperature=0, max_tokens=200))
    assert reference.last_stats.decode_tokens > 50  # the model would go on for a while

    page = open_page(webgpu_browser, site)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "200")
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_function("document.querySelector('.message.assistant').textContent.length > 0")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=LOAD_TIMEOUT_MS)
    stats = STATS.fullmatch(page.inner_text("#stats"))
    assert stats and stats[5] == "interrupted", page.inner_text("#stats")
    assert int(stats[4]) < reference.last_stats.decode_tokens
    assert page.errors == []


def test_without_webgpu_the_page_says_so(site, plain_browser):
    page = open_page(plain_browser, site)
    assert page.evaluate("document.body.dataset.state") == "unavailable"
    assert "WebGPU not available" in page.inner_text("#notice")
    assert page.is_visible("#notice")
    assert page.is_disabled("#prompt") and page.is_disabled("#send")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def static_site(tmp_path, builds, tiny_builds):
    """`mlc web --export` served by Python's plain static file server, plus models the page
    must refuse: a corrupted shard, a CPU build, a q4f16_1 build (SwiftShader has no fp16)."""
    cpu_dir, web_dir = builds
    _, f16_dir = tiny_builds.get("llama", "q4f16_1", build_options={"target": "webgpu"})
    root = tmp_path / "site"
    result = CliRunner().invoke(main, ["web", str(web_dir), "--export", str(root)])
    assert result.exit_code == 0, result.output
    shutil.copytree(root / "model", root / "corrupt")
    shard = root / "corrupt" / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (root / "cpu").mkdir()
    shutil.copy(cpu_dir / "mlc-chat-config.json", root / "cpu")
    shutil.copytree(f16_dir, root / "f16")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_exported_site_chats_from_a_static_server(static_site, webgpu_browser, builds):
    page = open_page(webgpu_browser, static_site)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#notice")
    answer, _ = ask(page, "Once upon a time", 16)
    reference = ChatModule(builds[0])  # no chat template: the raw-text `LM` one
    assert answer == reference.generate(
        "Once upon a time", GenerationConfig(temperature=0, max_tokens=16)
    )

    errors = {
        "missing/": "No model at",
        "corrupt/": "params_shard_0.bin) is corrupted: its sha256 differs",
        "cpu/": "built for the llvm target, not webgpu",
        "f16/": "lacks shader-f16: build it with --quantization q4f32_1",
    }
    for model, message in errors.items():
        page = open_page(webgpu_browser, f"{static_site}?model={model}")
        assert page.evaluate("document.body.dataset.state") == "error"
        assert message in page.inner_text("#notice"), (model, page.inner_text("#notice"))


def test_mlc_web_refuses_what_is_not_a_webgpu_build(tmp_path, builds):
    runner = CliRunner()
    assert "Usage:" in runner.invoke(main, ["web", "--help"]).output
    result = runner.invoke(main, ["web", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "model directory not found" in result.output
    result = runner.invoke(main, ["web", str(builds[0])])
    assert result.exit_code == 1 and "needs a webgpu build" in result.output
    assert "--target webgpu" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    result = runner.invoke(main, ["web", str(builds[1]), "--export", str(tmp_path / "full")])
    assert result.exit_code == 1 and "not empty" in result.output


# --- the page's JavaScript against the Python implementations --------------------------------


ENCODE_DECODE = """async ([tokenizers, samples, idLists]) => {
  const { Tokenizer } = await import("/tokenizer.js");
  const out = {};
  for (const [name, json] of Object.entries(tokenizers)) {
    const tokenizer = new Tokenizer(JSON.parse(json));
    out[name] = {
      ids: samples.map((s) => tokenizer.encode(s)),
      text: idLists[name].map((ids) => tokenizer.decode(ids)),
    };
  }
  return out;
}"""


def test_page_tokenizer_matches_the_tokenizers_library(tmp_path, site, plain_browser, builds):
    paths = tokenizer_variants(tmp_path, builds[1] / "tokenizer.json")
    samples = tokenizer_samples() + EXTRA_SAMPLES
    rng = random.Random(0)
    refs = {name: Tokenizer.from_file(str(path)) for name, path in paths.items()}
    id_lists = {
        name: [
            [rng.randrange(t.get_vocab_size()) for _ in range(rng.randrange(1, 8))]
            for _ in range(200)
        ]
        for name, t in refs.items()
    }
    page = open_page(plain_browser, site)  # no WebGPU needed
    result = page.evaluate(
        ENCODE_DECODE, [{n: p.read_text() for n, p in paths.items()}, samples, id_lists]
    )
    for name, tokenizer in refs.items():
        expected = [tokenizer.encode(s, add_special_tokens=False).ids for s in samples]
        pairs = zip(samples, result[name]["ids"], expected, strict=True)
        wrong = [(s, a, b) for s, a, b in pairs if a != b]
        assert wrong == [], (name, wrong[:3])
        # Random ids cut characters apart: incomplete UTF-8 must decode to U+FFFD alike.
        decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in id_lists[name]]
        assert result[name]["text"] == decoded, name
    # The byte fallback and the added tokens were exercised, not skipped.
    spm = refs["sentencepiece-gguf"]
    assert any(
        spm.id_to_token(i).startswith("<0x")
        for ids in result["sentencepiece-gguf"]["ids"]
        for i in ids
    )
    chatml = samples.index("<|im_start|>user\nhi<|im_end|>")
    assert result["tiny"]["ids"][chatml][0] == refs["tiny"].token_to_id("<|im_start|>")


def test_page_renders_conversations_as_the_python_templates(site, plain_browser):
    from mlc.default_model import embedded_gguf
    from mlc.gguf.checkpoint import GGUFCheckpoint

    smollm2 = GGUFCheckpoint(embedded_gguf()).file.metadata["tokenizer.chat_template"]
    templates = {
        **TEMPLATES,
        "smollm2": JinjaChatTemplate(smollm2, {}),
        "llama3-style": JinjaChatTemplate(LLAMA3_STYLE, {"bos_token": "<|begin_of_text|>"}),
    }
    roles = ["user", "assistant"]
    conversations = [
        [{"role": roles[i % 2], "content": c} for i, c in enumerate(CONVERSATION[:n])]
        for n in (1, 3, 5)
    ]
    formats = {name: turn_rules(t) for name, t in templates.items()}
    assert formats["llama3-style"]["trim"] and not formats["chatml"]["trim"]
    rendered = open_page(plain_browser, site).evaluate(
        """async ([formats, conversations]) => {
          const { renderConversation } = await import("/session.js");
          return Object.fromEntries(Object.entries(formats).map(
            ([name, f]) => [name, conversations.map((c) => renderConversation(f, c))]));
        }""",
        [formats, conversations],
    )
    for name, template in templates.items():
        assert rendered[name] == [template.render(c) for c in conversations], name
    assert rendered["smollm2"][0].startswith("<|im_start|>system\n")


def test_a_template_that_is_not_fixed_text_around_turns_is_refused():
    numbered = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ChatFormatError, match="same text"):
        turn_rules(JinjaChatTemplate(numbered, {}))


def test_the_page_refuses_settings_it_does_not_implement(site, plain_browser):
    errors = open_page(plain_browser, site).evaluate(
        """async () => {
          const { checkConfig } = await import("/session.js");
          const plain = { temperature: 0.7, topP: 0.9, topK: 40, minP: 0,
                          repetitionPenalty: 1, maxTokens: 8 };
          return [{}, { responseFormat: { type: "json_object" } }, { regex: "a" }, { seed: 1 },
                  { tools: [] }]
            .map((extra) => {
              try { checkConfig({ ...plain, ...extra }); return null; }
              catch (err) { return err.message; }
            });
        }"""
    )
    assert errors[0] is None
    assert "structured output is not available in the browser" in errors[1]
    assert errors[2].startswith("regex: structured output")
    assert errors[3].startswith("unknown generation setting seed")
    assert errors[4].startswith("tools: tool calling is not available in the browser")
