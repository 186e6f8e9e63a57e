"""The quality table of the native GGUF codes: for each llama.cpp quantization type, one file of
the embedded default's weights in that type, and its perplexity under llama.cpp and under our
`gguf` build of the very same file.

    python benchmarks/native_codes_quality.py --text benchmarks/data/gpl-3.0.txt \\
        [--out dist/native-codes] [--types Q4_0,Q4_K_M,...]

The files come from the default's weights dequantized exactly (an F32 GGUF written by our
exporter) quantized by llama.cpp itself (`llama_model_quantize`), so the formats are
llama.cpp's own choices per tensor (SmolLM2's hidden size, 576, is no multiple of 256: tensors
whose rows are that long fall back from K-quants to legacy formats, and the table says which
formats each file holds). Each file is scored as `benchmarks/perplexity_vs_llamacpp.py` scores
it (llama-perplexity's method, both engines on llama.cpp's token ids). Prints a Markdown table
and writes the summaries to OUT/quality.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

from float_model_from_gguf import make_float_model, quantize_with_llamacpp
from perplexity_vs_llamacpp import REFERENCE, compare

from mlc.gguf.export import export_gguf

TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K"]


def tensor_types(path: Path) -> str:
    """The quantization types of a GGUF file's 2-D tensors, most common first."""
    from gguf import GGUFReader

    counts = collections.Counter(
        t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) == 2
    )
    return ", ".join(f"{name} ×{n}" for name, n in counts.most_common())


def quantize(f32: Path, path: Path, name: str) -> None:
    import llama_cpp

    quantize_with_llamacpp(f32, path, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}"))


def score(path: Path, args: argparse.Namespace) -> dict:
    summary = compare(path, args.text, args.ctx, ["gguf"], args.out / "builds")
    summary["tensor_types"] = tensor_types(path)
    summary["mib"] = path.stat().st_size / 2**20
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dist/native-codes"))
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--step", choices=["quantize", "score"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    f32 = args.out / "model-F32.gguf"
    if args.step is not None:  # one file, in a process of its own (see below)
        path = args.out / f"model-{args.types}.gguf"
        if args.step == "quantize":
            quantize(f32, path, args.types)
        else:
            (args.out / f"{args.types}.json").write_text(json.dumps(score(path, args)))
        return
    if not f32.is_file():
        export_gguf(make_float_model(args.out, noise=0.0, seed=0), f32)
    # Each file is quantized and scored in a process of its own (llama.cpp's and TVM's
    # thread pools apart; a crash names its file).
    rows = []
    for name in args.types.split(","):
        for step in ("quantize", "score"):
            if step == "quantize" and (args.out / f"model-{name}.gguf").is_file():
                continue
            command = [sys.executable, __file__, "--step", step, "--types", name]
            command += ["--text", str(args.text), "--out", str(args.out), "--ctx", str(args.ctx)]
            subprocess.run(command, check=True)
        rows.append((name, json.loads((args.out / f"{name}.json").read_text())))
        (args.out / "quality.json").write_text(json.dumps(dict(rows), indent=2))
    print(
        "| llama.cpp type | 2-D tensors in the file | MiB | llama.cpp | ours (`gguf`) | ours vs "
        f"llama.cpp | KL from `{REFERENCE}`: llama.cpp / ours |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in rows:
        ppl, kl = s["perplexity"], s[f"kl_from_{REFERENCE}"]
        change = 100 * (ppl["gguf"] / ppl["llama.cpp"] - 1)
        print(
            f"| {name} | {s['tensor_types']} | {s['mib']:.1f} | {ppl['llama.cpp']:.3f} | "
            f"{ppl['gguf']:.3f} | {change:+.2f} % | {kl['llama.cpp']:.5f} / {kl['gguf']:.5f} |"
        )


if __name__ == "__main__":
    main()
