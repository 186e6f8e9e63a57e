"""The `mlc` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlc import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlc")
def main() -> None:
    """Compile large language models with Apache TVM and chat with them."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option(
    "--target",
    default="llvm",
    show_default=True,
    help="Target preset to compile for; `auto` picks this machine's device, `help` lists them.",
)
@click.option(
    "--arch",
    default=None,
    help="cuda only: GPU architectures to compile for, comma-separated (default sm_80).",
)
@click.option(
    "--quantization",
    default=None,
    help="Weight quantization code (docs/quantization.md lists them); default: gguf for a GGUF "
    "file built for the CPU (its own formats, bit for bit), else q0f32.",
)
@click.option("--conv-template", default=None, help="Conversation template name (default LM).")
@click.option(
    "-o",
    "--output",
    default="dist",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Directory that receives <model>-<quantization>/.",
)
@click.option(
    "--context-window-size",
    type=click.IntRange(min=1),
    default=None,
    help="Override the context window (tokens).",
)
@click.option(
    "--prefill-chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Largest number of tokens one prefill call takes.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Most sequences one batched decode step serves (`mlc serve`).",
)
@click.option(
    "--kv-cache-dtype",
    type=click.Choice(["auto", "float32", "float16"]),
    default="auto",
    show_default=True,
    help="dtype of the cached keys and values; auto: the model's.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def build(
    model: Path | None,
    target: str,
    arch: str | None,
    quantization: str | None,
    conv_template: str | None,
    output: Path,
    context_window_size: int | None,
    prefill_chunk_size: int | None,
    max_batch_size: int,
    kv_cache_dtype: str,
    quiet: bool,
) -> None:
    """Convert and compile the Hugging Face model directory (or GGUF file) MODEL."""
    from mlc.build import BuildOptions
    from mlc.build import build as run_build

    if target == "help":
        from mlc.targets import describe_targets

        click.echo("Targets:\n" + describe_targets())
        return
    if model is None:
        raise click.UsageError("Missing argument 'MODEL'.")

    opts = BuildOptions(
        model=model,
        quantization=quantization,
        target=target,
        arch=arch,
        output=output,
        conv_template=conv_template,
        context_window_size=context_window_size,
        prefill_chunk_size=prefill_chunk_size,
        max_batch_size=max_batch_size,
        kv_cache_dtype=kv_cache_dtype,
        quiet=quiet,
    )
    _run(lambda: run_build(opts))


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--model-lib", default=None, help="Library to load (default: the one in MODEL).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--conv-template", default=None, help="Override the model's conversation template.")
@click.option("--prompt", default=None, help="Answer this one prompt and exit.")
@click.option("--temperature", type=float, default=None)
@click.option("--max-tokens", type=int, default=None)
def chat(
    model: Path | None,
    model_lib: str | None,
    device: str,
    conv_template: str | None,
    prompt: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> None:
    """Chat in the terminal with the built model in directory MODEL.

    Without MODEL: the embedded default (SmolLM2-135M-Instruct), built into dist/ on first use.
    """
    from mlc.lean_runtime import skip_torch

    skip_torch()
    from mlc.chat_repl import run_chat

    if model is None:
        from mlc.default_model import default_model_dir

        model = _run(default_model_dir)
    _run(lambda: run_chat(model, model_lib, device, conv_template, prompt, temperature, max_tokens))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--prompt-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--gen-len", type=click.IntRange(min=0), default=64, show_default=True)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Measured runs (after one warm-up); the median is reported.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for mlc and the references (default: every core this process may use).",
)
@click.option(
    "--compare",
    type=click.Choice(["llama.cpp", "torch"]),
    multiple=True,
    help="Also run this engine on the source weights, same run and threads (repeatable).",
)
@click.option(
    "--speculative",
    metavar="METHOD",
    default=None,
    help="Also time greedy decoding with this drafter (prompt-lookup, or draft-model with "
    "--draft-model) against plain decoding on an input-grounded task (correcting a given "
    "text), same run; the answers must be identical.",
)
@click.option(
    "--draft-model",
    type=click.Path(path_type=Path),
    default=None,
    help="With --speculative draft-model: a smaller build with the same tokenizer.",
)
@click.option(
    "--bandwidth-probe-mb",
    "probe_mb",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="After the decode runs, read a buffer this large (MiB, in a process of its own) to "
    "measure the memory bandwidth, and report the decode's fraction of the limit it sets; 0 "
    "skips the probe.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(
    model: Path,
    prompt_len: int,
    gen_len: int,
    runs: int,
    device: str,
    threads: int | None,
    compare: tuple[str, ...],
    speculative: str | None,
    draft_model: Path | None,
    probe_mb: int,
    as_json: bool,
) -> None:
    """Measure prefill and decode speed of the built model in directory MODEL.

    --compare llama.cpp exports the source model to the nearest GGUF format (Q4_0 for 4-bit
    codes, Q8_0, F16, F32) with our own exporter and runs it through llama-cpp-python.
    """
    import os

    if threads is not None:  # read by TVM's thread pool when the first kernel runs
        os.environ["TVM_NUM_THREADS"] = str(threads)
    from mlc.lean_runtime import skip_torch

    skip_torch()
    from mlc.bench import print_result, run_bench

    _run(
        lambda: print_result(
            run_bench(
                model,
                prompt_len,
                gen_len,
                runs,
                device,
                compare,
                speculative,
                draft_model,
                probe_mb,
            ),
            as_json,
        )
    )


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--text",
    "text_file",
    type=click.Path(path_type=Path),
    required=True,
    help="UTF-8 text file to score (llama.cpp's reference: wikitext-2 wiki.test.raw).",
)
@click.option(
    "--ctx",
    type=int,
    default=512,
    show_default=True,
    help="Tokens per chunk (even); the second half of each chunk is scored.",
)
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=None,
    help="Score at most this many chunks (default: all the text holds).",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--kl-against",
    type=click.Path(path_type=Path),
    default=None,
    help="Reference build (same tokenizer): also report the mean KL divergence from its "
    "next-token distributions and the top-1 agreement.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def perplexity(
    model: Path,
    text_file: Path,
    ctx: int,
    chunks: int | None,
    device: str,
    kl_against: Path | None,
    as_json: bool,
) -> None:
    """Perplexity of the built model in directory MODEL on a text, as llama.cpp measures it.

    The text is cut into chunks of --ctx tokens, each evaluated from an empty cache (its first
    token BOS where the model adds BOS); the tokens of each chunk's second half are scored.
    """
    import json

    from mlc.lean_runtime import skip_torch

    skip_torch()
    from tqdm import tqdm

    from mlc.runtime.perplexity import perplexity as run_perplexity
    from mlc.runtime.perplexity import read_text

    bar = None

    def on_chunk(done: int, total: int, ppl: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="perplexity", unit="chunk", file=sys.stderr)
        if done:
            bar.set_postfix_str(f"{ppl:.4f}", refresh=False)
            bar.update(1)

    def action() -> None:
        text = read_text(text_file)
        try:
            result = run_perplexity(model, text, ctx, chunks, device, kl_against, on_chunk)
        finally:
            if bar is not None:
                bar.close()
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2))
        else:
            click.echo(result.summary(text_file.name, str(kl_against)))

    _run(action)


@main.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    default=None,
    envvar="MLC_API_KEY",
    help="Require Authorization: Bearer KEY on every path but /health (or set MLC_API_KEY).",
)
@click.option("--model-lib", default=None, help="Library to load (default: the one in MODEL).")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Sequences decoded together (default: what the model was built for).",
)
@click.option(
    "--kv-cache-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="KV cache size in tokens (default: every batch slot at full context, up to 8192).",
)
@click.option(
    "--prefill-chunk-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Prompt tokens per engine step (at most the build's), so long prompts do not stall "
    "streaming requests, and the prefix cache's granularity; answers equal ChatModule's with "
    "the same prefill_chunk_size.",
)
@click.option(
    "--prefix-cache/--no-prefix-cache",
    default=None,
    help="Keep the KV of prompts' whole prefill chunks for later prompts that start with them "
    "(answers unchanged). Default: on, where the model can share KV prefixes.",
)
@click.option("--max-queue", type=click.IntRange(min=0), default=256, show_default=True)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a request may wait for room before a 503.",
)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGINT/SIGTERM, seconds in-flight requests may take before they end with an error.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"]),
    default="info",
    show_default=True,
)
@click.option(
    "--lenient",
    is_flag=True,
    help="Ignore request fields this server does not know instead of refusing them (400). "
    "Fields of the OpenAI API it does not implement (audio, ...) are refused either way.",
)
@click.option(
    "--tool-call-format",
    type=click.Choice(["hermes", "llama3_json", "mistral"]),
    default=None,
    help="How the model writes tool calls (default: the one its chat template was made for).",
)
@click.option(
    "--speculative",
    metavar="METHOD",
    default=None,
    help="Speculative decoding with this drafter (prompt-lookup): each decode step verifies "
    "the guesses in the same pass; greedy answers are unchanged (docs/speculative.md).",
)
@click.option(
    "--num-draft-tokens",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="With --speculative: the most guesses per sequence and step.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=None,
    help="Run N engine replicas (one CPU thread each) behind Ray Serve's HTTP proxy, with "
    'prefix-aware routing (needs pip install "mlc[ray]"). Default: one process, no Ray.',
)
@click.option(
    "--ray-address",
    default=None,
    help="With --replicas: join this Ray cluster instead of starting one on 127.0.0.1.",
)
def serve(
    model: Path | None,
    host: str,
    port: int,
    api_key: str | None,
    model_lib: str | None,
    device: str,
    max_batch_size: int | None,
    kv_cache_tokens: int | None,
    prefill_chunk_size: int,
    prefix_cache: bool | None,
    max_queue: int,
    queue_timeout: float,
    max_body_bytes: int,
    shutdown_timeout: float,
    log_level: str,
    lenient: bool,
    tool_call_format: str | None,
    speculative: str | None,
    num_draft_tokens: int,
    replicas: int | None,
    ray_address: str | None,
) -> None:
    """Serve the built model in directory MODEL over an OpenAI-compatible HTTP API.

    Without MODEL: the embedded default (SmolLM2-135M-Instruct), built into dist/ on first use.
    """
    from mlc.lean_runtime import skip_torch

    skip_torch()
    from mlc.runtime.serve.server import EngineOptions, ServerOptions
    from mlc.runtime.serve.server import serve as run_server

    if model is None:
        from mlc.default_model import default_model_dir

        model = _run(default_model_dir)
    server = ServerOptions(
        host, port, api_key, max_body_bytes, shutdown_timeout, log_level, lenient
    )
    engine = EngineOptions(
        max_batch_size=max_batch_size,
        kv_cache_tokens=kv_cache_tokens,
        max_queue=max_queue,
        queue_timeout=queue_timeout,
        device=device,
        model_lib=model_lib,
        prefill_chunk_size=prefill_chunk_size,
        tool_call_format=tool_call_format,
        prefix_cache=prefix_cache,
        speculative=speculative,
        num_draft_tokens=num_draft_tokens,
    )
    if ray_address is not None and replicas is None:
        raise click.UsageError("--ray-address goes with --replicas")
    if replicas is not None:
        from mlc.runtime.serve.replicas import serve_replicas

        _run(lambda: serve_replicas(model, server, engine, replicas, ray_address))
        return
    _run(lambda: run_server(model, server, engine))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--conv-template", default=None, help="Override the model's conversation template.")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the page, the runtime and the model into this new directory (a static site).",
)
def web(
    model: Path, host: str, port: int, conv_template: str | None, export_dir: Path | None
) -> None:
    """Chat in a browser with the webgpu build in directory MODEL.

    Serves the chat page and the model on http://HOST:PORT/ (WebGPU needs a secure context:
    localhost or https), or with --export writes them out for any static web server.
    """
    from mlc.runtime.web.server import export_site, serve

    def on_ready(url: str) -> None:
        click.echo(f"Chat page: {url}  (Ctrl-C stops)")
        sys.stdout.flush()

    def action() -> None:
        if export_dir is not None:
            click.echo(f"Exported the chat site to {export_site(model, export_dir, conv_template)}")
        else:
            serve(model, host, port, conv_template, on_ready)

    try:
        _run(action)
    except FileExistsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--tvm-ffi-wheel",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Take tvm_ffi from this apache-tvm-ffi wheel (a bundle for another Python version).",
)
def bundle(out_dir: Path, tvm_ffi_wheel: Path | None) -> None:
    """Write the runtime without the TVM compiler into the new directory OUT_DIR.

    With OUT_DIR on PYTHONPATH, a Python that has numpy, tokenizers and jinja2 (and no
    apache-tvm) loads builds and chats: `from mlc import ChatModule`.
    """
    from mlc.bundle import bundle_size, write_bundle

    def action() -> None:
        out = write_bundle(out_dir, tvm_ffi_wheel)
        click.echo(f"Wrote the runtime bundle {out} ({bundle_size(out) / 2**20:.1f} MiB)")

    try:
        _run(action)
    except FileExistsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


@main.group()
def native() -> None:
    """The native runtime: C++ with a C API, no Python at run time (docs/native.md)."""


@native.command("build")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("dist/native"),
    show_default=True,
    help="Where to put bin/mlc-chat, lib/ (our library and TVM's runtime) and include/.",
)
@click.option(
    "--arch",
    type=click.Choice(["x86_64", "arm64"]),
    default=None,
    help="Compile for this machine (the default) or cross-compile for 64-bit ARM Linux "
    "(needs apt's g++-aarch64-linux-gnu; run it here with qemu-aarch64).",
)
def native_build_command(out_dir: Path, arch: str | None) -> None:
    """Compile the native runtime and `mlc-chat` into OUT_DIR.

    Then: `OUT_DIR/bin/mlc-chat --model dist/MODEL --prompt "Hello"`.
    """
    from mlc.native import NativeBuildError, native_build

    def action() -> None:
        native_build(out_dir, arch, log=lambda m: click.echo(m, err=True))

    try:
        _run(action)
    except NativeBuildError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


def _run(action):
    """Report expected failures (bad input, damaged artifacts) as one clear line."""
    from mlc.hf_checkpoint import CheckpointError
    from mlc.runtime import ArtifactError
    from mlc.targets import ToolMissingError

    try:
        return action()
    except (
        CheckpointError,
        ArtifactError,
        ValueError,
        FileNotFoundError,
        ToolMissingError,
    ) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
