"""Perplexity of our builds of a GGUF file next to llama.cpp's on the same file and text, and
each one's KL divergence from the exact model (the `q0f32` build: the file's weights
dequantized exactly, float32 throughout).

    python benchmarks/perplexity_vs_llamacpp.py FILE.gguf --text TEXT [--ctx 512]
        [--codes gguf,q4a8_1] [--out DIR] [--source MODEL]

With `--source`, our builds come from another checkpoint of the same model (a full-precision
Hugging Face directory, say, of which FILE is llama.cpp's quantization): each quantizer then
starts from the same weights, and `q0f32` is the unquantized model.

llama.cpp runs through llama-cpp-python (`pip install -e ".[bench]"`), scored exactly as
`llama-perplexity` scores (`tools/perplexity`): the text tokenized by llama.cpp (BOS first when
the model adds it), non-overlapping chunks of `ctx` tokens each evaluated from an empty cache
with its first token BOS when the model adds one, positions ctx/2 .. ctx-2 scored. Our builds
are scored by `mlc perplexity`'s code on the very same token ids (llama.cpp's pre-tokenizers
split some whitespace differently from the Hugging Face tokenizer we follow, so tokenizing
each side its own way would compare different token streams); the script reports how many
positions the two tokenizations differ at.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from mlc.build import BuildOptions, build
from mlc.runtime.perplexity import ScoredBuild, kl_divergence, log_softmax, read_text

REFERENCE = "q0f32"


class LlamaCpp:
    """llama.cpp on the file, one chunk at a time, as `llama-perplexity` evaluates it."""

    def __init__(self, path: Path, ctx: int, threads: int):
        from llama_cpp import Llama, llama_vocab_get_add_bos

        self.ctx = ctx
        self.llm = Llama(
            model_path=str(path),
            n_ctx=ctx,
            n_batch=ctx,
            n_ubatch=ctx,
            logits_all=True,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.add_bos = bool(llama_vocab_get_add_bos(self.llm._model.vocab))

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=False))

    def chunk(self, ids: list[int], index: int) -> np.ndarray:
        tokens = np.array(ids[index * self.ctx : (index + 1) * self.ctx], dtype=np.int32)
        if self.add_bos:
            tokens[0] = self.llm.token_bos()
        return tokens

    def scored_logprobs(self, tokens: np.ndarray) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens.tolist())
        return log_softmax(np.array(self.llm.scores[self.ctx // 2 : self.ctx - 1]))


def compare(
    gguf: Path,
    text_path: Path,
    ctx: int = 512,
    codes: list[str] | None = None,
    out: Path = Path("dist/perplexity"),
    source: Path | None = None,
    threads: int = len(os.sched_getaffinity(0)),
) -> dict:
    """Perplexities and KL divergences of llama.cpp and our builds on one GGUF file."""
    text = read_text(text_path)
    llama = LlamaCpp(gguf, ctx, threads)
    ids = llama.tokenize(text)
    engines: dict[str, LlamaCpp | ScoredBuild] = {"llama.cpp": llama}
    for code in [REFERENCE, *(codes or ["gguf", "q4a8_1"])]:
        options = BuildOptions(model=source or gguf, quantization=code, output=out, quiet=True)
        engines[code] = ScoredBuild(build(options))
    exact = engines[REFERENCE]
    if (exact.bos_token_id is not None) != llama.add_bos:
        raise SystemExit("we and llama.cpp disagree on whether the model adds BOS")
    ours = exact.tokenize(text)
    differ = sum(a != b for a, b in zip(ours, ids, strict=False)) + abs(len(ours) - len(ids))

    n_chunks = len(ids) // ctx
    nll = dict.fromkeys(engines, 0.0)
    kl = dict.fromkeys(engines, 0.0)
    count = 0
    for i in range(n_chunks):
        tokens = llama.chunk(ids, i)
        targets = tokens[ctx // 2 + 1 :]
        logprobs = {name: engine.scored_logprobs(tokens) for name, engine in engines.items()}
        for name, rows in logprobs.items():
            nll[name] -= float(rows[np.arange(targets.size), targets].sum())
            kl[name] += float(kl_divergence(logprobs[REFERENCE], rows).sum())
        count += targets.size
        print(f"chunk {i + 1}/{n_chunks}", flush=True)
    return {
        "file": str(gguf),
        "text": str(text_path),
        "ctx": ctx,
        "chunks": n_chunks,
        "scored_tokens": count,
        "tokens": {"llama.cpp": len(ids), "ours": len(ours), "positions_differing": differ},
        "perplexity": {name: float(np.exp(value / count)) for name, value in nll.items()},
        f"kl_from_{REFERENCE}": {name: value / count for name, value in kl.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--codes", default="gguf,q4a8_1")
    parser.add_argument("--out", type=Path, default=Path("dist/perplexity"))
    parser.add_argument("--source", type=Path, default=None, help="what our builds are built from")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    summary = compare(
        args.gguf, args.text, args.ctx, args.codes.split(","), args.out, args.source, args.threads
    )
    ppl, kl = summary["perplexity"], summary[f"kl_from_{REFERENCE}"]
    print(json.dumps(summary, indent=2))
    print(f"| engine | perplexity | vs llama.cpp | KL from {REFERENCE} |")
    for name in ppl:
        change = 100 * (ppl[name] / ppl["llama.cpp"] - 1)
        print(f"| {name} | {ppl[name]:.3f} | {change:+.2f} % | {kl[name]:.5f} |")


if __name__ == "__main__":
    main()
