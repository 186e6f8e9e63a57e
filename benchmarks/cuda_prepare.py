"""Prepare the CUDA check of a GPU machine that has Python but no apache-tvm (on this machine).

python benchmarks/cuda_prepare.py OUT_DIR --tvm-ffi-wheel WHEEL [--arch sm_90] [--big]

OUT_DIR receives what travels to the GPU machine, where `benchmarks/cuda_check.py` runs it:
- `bundle/`: the runtime without the TVM compiler (`mlc bundle`), its `tvm_ffi` taken from
  WHEEL (the GPU machine's Python version);
- `builds/<case>-<quant>/`: tiny models of three architectures (GQA with head_dim 64 and 128,
  biases, norms off their initial values) built for CUDA at q0f16 and q4f16_1, each with
  `reference.npz`: a 300-token prompt, the CPU build's greedy tokens and its logits at the
  prompt's end and at every decode step;
- with `--big`, `big/`: the TinyLlama-1.1B shape at q4f16_1 for CUDA, library and indexes only
  (`cuda_check.py` fills the weight shards with random values there: 620 MB would not travel).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mlc.build import BuildOptions, build
from mlc.bundle import bundle_size, write_bundle
from mlc.runtime.compiled_model import CompiledModel
from mlc.testing.random_model import PRESETS, save_llama
from mlc.testing.real_shapes import CASES, CONTEXT, save_case

QUANTIZATIONS = ("q0f16", "q4f16_1")
PROMPT_TOKENS = 300
DECODE_STEPS = 16


def reference(cpu_dir: Path, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The CPU build's logits: the prompt's last token, then each greedy decode step."""
    model = CompiledModel(cpu_dir)
    prompt = np.random.default_rng(seed).integers(3, vocab, PROMPT_TOKENS).astype(np.int32)
    logits = [model.prefill(prompt)]
    tokens = []
    for _ in range(DECODE_STEPS):
        tokens.append(int(np.argmax(logits[-1])))
        logits.append(model.decode(tokens[-1]))
    return {"prompt": prompt, "tokens": np.array(tokens, np.int32), "logits": np.stack(logits)}


def prepare_case(name: str, arch: str, work: Path, out: Path) -> None:
    hf_dir = save_case(name, work / "hf" / name)
    for quant in QUANTIZATIONS:
        options = dict(model=hf_dir, quantization=quant, context_window_size=CONTEXT, quiet=True)
        cpu_dir = build(BuildOptions(output=work / "cpu", **options))
        cuda_dir = build(BuildOptions(output=work / "cuda", target="cuda", arch=arch, **options))
        dest = out / "builds" / f"{name}-{quant}"
        shutil.copytree(cuda_dir, dest)
        vocab = CompiledModel(cpu_dir, verify_weights=False).vocab_size
        np.savez(dest / "reference.npz", **reference(cpu_dir, vocab))
        print(f"{dest.name}: built and referenced", flush=True)


def prepare_big(arch: str, work: Path, out: Path) -> None:
    """TinyLlama-1.1B's shape: the library and the two indexes, no weight shards."""
    hf_dir = save_llama(work / "hf" / "tinyllama-1.1b", **PRESETS["tinyllama-1.1b"])
    built = build(
        BuildOptions(
            model=hf_dir, quantization="q4f16_1", target="cuda", arch=arch, output=work / "big"
        )
    )
    dest = out / "big" / built.name
    dest.mkdir(parents=True)
    for path in built.iterdir():
        if not path.name.startswith("params_shard_"):
            shutil.copy2(path, dest / path.name)
    print(f"{dest.name}: library and indexes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tvm-ffi-wheel", type=Path, required=True)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--big", action="store_true")
    args = parser.parse_args()
    write_bundle(args.out_dir / "bundle", args.tvm_ffi_wheel)
    with tempfile.TemporaryDirectory(prefix="mlc-cuda-prepare-") as tmp:
        for name in CASES:
            prepare_case(name, args.arch, Path(tmp), args.out_dir)
        if args.big:
            prepare_big(args.arch, Path(tmp), args.out_dir)
    print(f"{args.out_dir}: {bundle_size(args.out_dir) / 2**20:.1f} MiB to carry")


if __name__ == "__main__":
    main()
