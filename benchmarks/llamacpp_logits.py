"""Our builds of GGUF files against llama.cpp's logits on the same files: files our exporter
writes in each format llama.cpp and we both run, and any real file given.

    python benchmarks/llamacpp_logits.py [--gguf FILE.gguf ...] [--out DIR]

For each file: llama.cpp (llama-cpp-python, `pip install -e ".[bench]"`, float32 KV cache)
and our default build (`gguf`: the file's own formats) evaluate one prompt; reported are the
largest logit difference relative to the logit range, the mean KL divergence of the
next-token distributions and the top-1 agreement, next to the same numbers for our exact
build (`q0f32`: the file's weights dequantized, float32 throughout). Both engines round
activations to int8 for the quantized formats, each its own way, so `gguf` should sit near
llama.cpp and `q0f32` a little further; an exporter or reader that misplaced a value would
show as a difference of the order of the logits themselves.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from mlc.bench_reference import _disable_extra_buffer_types
from mlc.build import BuildOptions, build
from mlc.gguf.export import export_gguf
from mlc.runtime import CompiledModel
from mlc.runtime.perplexity import kl_divergence, log_softmax
from mlc.testing.random_model import save_llama

FORMATS = ["F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
# A small Llama whose Linear layers hold whole blocks of 16 groups and a tail (K = 576).
SHAPE = {
    "vocab_size": 512,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 512,
    "init_std": 0.05,
}
PROMPT_LEN = 48


def llama_cpp_logits(path: Path, prompt: list[int]) -> np.ndarray:
    import llama_cpp

    _disable_extra_buffer_types(llama_cpp)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=len(prompt),
        n_batch=len(prompt),
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        n_threads=len(os.sched_getaffinity(0)),
        verbose=False,
    )
    llm.eval(prompt)
    return np.array(llm.scores[: len(prompt)], dtype=np.float64)


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    span = reference.max() - reference.min()
    ref_lp, lp = log_softmax(reference), log_softmax(logits)
    return {
        "max_diff_over_range": float(np.abs(logits - reference).max() / span),
        "kl_mean": float(kl_divergence(ref_lp, lp).mean()),
        "top1_agreement": float((ref_lp.argmax(-1) == lp.argmax(-1)).mean()),
    }


def check_file(path: Path, out: Path, prompt: list[int]) -> dict[str, dict[str, float]]:
    reference = llama_cpp_logits(path, prompt)
    rows = {}
    for code in ("gguf", "q0f32"):
        built = build(BuildOptions(model=path, quantization=code, output=out, quiet=True))
        logits = CompiledModel(built).prefill(prompt, all_logits=True).astype(np.float64)
        rows[code] = compare(reference, logits)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("dist/llamacpp-logits"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    hf_dir = args.out / "random-llama"
    if not hf_dir.exists():
        save_llama(hf_dir, **SHAPE)
    files = {
        kind: export_gguf(hf_dir, args.out / f"random-llama-{kind}.gguf", kind) for kind in FORMATS
    }
    files.update({path.name: path for path in args.gguf})
    results = {}
    for name, path in files.items():
        vocab = 512 if name in FORMATS else 32000
        prompt = [int(t) for t in rng.integers(3, vocab, PROMPT_LEN)]
        results[name] = check_file(path, args.out / "dist", prompt)
        print(name, json.dumps(results[name]), flush=True)
    print("| file | build | max diff / logit range | mean KL | top-1 agreement |")
    for name, rows in results.items():
        for code, r in rows.items():
            print(
                f"| {name} | `{code}` | {r['max_diff_over_range']:.2e} | {r['kl_mean']:.2e} "
                f"| {100 * r['top1_agreement']:.1f} % |"
            )


if __name__ == "__main__":
    main()
