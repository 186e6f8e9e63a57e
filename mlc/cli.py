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
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", default="llvm", show_default=True, help="Target preset to compile for.")
@click.option("--quantization", default="q0f32", show_default=True, help="Weight quantization.")
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
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def build(
    model: Path,
    target: str,
    quantization: str,
    conv_template: str | None,
    output: Path,
    context_window_size: int | None,
    prefill_chunk_size: int | None,
    quiet: bool,
) -> None:
    """Convert and compile the Hugging Face model directory MODEL."""
    from mlc.build import BuildOptions
    from mlc.build import build as run_build

    opts = BuildOptions(
        model=model,
        quantization=quantization,
        target=target,
        output=output,
        conv_template=conv_template,
        context_window_size=context_window_size,
        prefill_chunk_size=prefill_chunk_size,
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(
    model: Path, prompt_len: int, gen_len: int, runs: int, device: str, as_json: bool
) -> None:
    """Measure prefill and decode speed of the built model in directory MODEL."""
    from mlc.bench import print_result, run_bench

    _run(lambda: print_result(run_bench(model, prompt_len, gen_len, runs, device), as_json))


def _run(action):
    """Report expected failures (bad input, damaged artifacts) as one clear line."""
    from mlc.hf_checkpoint import CheckpointError
    from mlc.runtime import ArtifactError

    try:
        return action()
    except (CheckpointError, ArtifactError, ValueError, FileNotFoundError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
