"""The CUDA check on a GPU machine, from what `benchmarks/cuda_prepare.py` wrote.

PYTHONPATH=CARRIED/bundle python benchmarks/cuda_check.py CARRIED [--out DIR] [--compile]

1. Parity: every CUDA build in CARRIED/builds prefills its 300-token prompt and decodes the CPU
   build's greedy tokens; the logits of the prompt's end and of every step must be within 1 %
   of the CPU logits' range (the fp16 tolerance of tests/test_quantization.py).
2. Batching: 16 sequences decoded in one batch equal the same sequences run one at a time.
3. Speed (CARRIED/big, TinyLlama-1.1B's shape at q4f16_1, random weights written here):
   prefill of 128 and 2,000 tokens, decode at batch 1 and 16, against PyTorch fp16 eager on the
   same GPU (and `torch.compile`d, with --compile), and decode against the memory-bandwidth
   limit (4.8 TB/s, the H200's datasheet figure) for the bytes a step reads.
Prints a table last and writes `cuda_check.json` to --out. With --compile, run the PyTorch part
in a process of its own (`--skip parity batch speed`): Triton's launcher crashed in a process
that had loaded TVM's CUDA runtime.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

BANDWIDTH = 4.8e12  # bytes/s, H200 datasheet
FP16_TOLERANCE = 0.01  # of the reference logits' range
RESULTS: dict = {"parity": [], "batch": {}, "speed": {}, "errors": []}


def preload_cudart() -> None:
    """TVM's CUDA runtime library needs libcudart.so.13; PyTorch's wheels carry one."""
    patterns = [
        *(f"{p}/nvidia/**/libcudart.so.13" for p in sys.path if p),
        "/usr/local/cuda*/lib*/libcudart.so.13",
    ]
    for pattern in patterns:
        for path in glob.glob(pattern, recursive=True):
            print(f"CUDA runtime: {path}", flush=True)
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return
    raise RuntimeError("libcudart.so.13 not found")


def section(name: str):
    def wrap(func):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            except Exception:
                RESULTS["errors"].append({"section": name, "traceback": traceback.format_exc()})
                print(f"[{name}] failed:\n{traceback.format_exc()}", flush=True)
            finally:
                print(f"[{name}] {time.perf_counter() - start:.1f} s", flush=True)

        return run

    return wrap


@section("parity")
def parity(root: Path, device: str) -> None:
    from mlc.runtime.compiled_model import CompiledModel

    for build_dir in sorted((root / "builds").iterdir()):
        ref = np.load(build_dir / "reference.npz")
        model = CompiledModel(build_dir, device=device)
        logits = [model.prefill(ref["prompt"])]
        for token in ref["tokens"]:
            logits.append(model.decode(int(token)))
        got, want = np.stack(logits).astype(np.float64), ref["logits"].astype(np.float64)
        span = float(want.max() - want.min())
        error = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
        same_argmax = int((got.argmax(-1) == want.argmax(-1)).sum())
        RESULTS["parity"].append(
            {
                "build": build_dir.name,
                "steps": len(logits),
                "max_abs_error": error,
                "logit_range": span,
                "relative": error / span,
                "ok": error <= FP16_TOLERANCE * span,
                "argmax_agree": f"{same_argmax}/{len(logits)}",
            }
        )
        print(RESULTS["parity"][-1], flush=True)


@section("batch")
def batch(root: Path, device: str) -> None:
    from mlc.runtime.compiled_model import CompiledModel

    build_dir = root / "builds" / "llama-gqa-hd64-q4f16_1"
    prompt = np.load(build_dir / "reference.npz")["prompt"]
    model = CompiledModel(build_dir, device=device, max_batch_size=16, kv_cache_tokens=16 * 64)
    prompts = [prompt[i : i + 20 + i] for i in range(16)]

    def run(groups: list[list[int]]) -> np.ndarray:
        """Logits [sequence, step] with the sequences run in the given groups."""
        out = np.zeros((16, 9, model.vocab_size))
        for group in groups:
            for i in group:
                model.add_sequence(100 + i)
                out[i, 0] = model.forward_prefill([100 + i], [prompts[i]])[0]
            for step in range(1, 9):
                tokens = [int(np.argmax(out[i, step - 1])) for i in group]
                logits = model.forward_decode([100 + i for i in group], tokens)
                for row, i in enumerate(group):
                    out[i, step] = logits[row]
            for i in group:
                model.remove_sequence(100 + i)
        return out

    together, alone = run([list(range(16))]), run([[i] for i in range(16)])
    span = float(alone.max() - alone.min())
    error = float(np.abs(together - alone).max())
    RESULTS["batch"] = {
        "sequences": 16,
        "steps": 9,
        "max_abs_error": error,
        "relative": error / span,
    }
    print(RESULTS["batch"], flush=True)


def fill_random_shards(model_dir: Path) -> int:
    """Random weights for a build carried without its shards; returns the bytes written."""
    from mlc.runtime.tensor_cache import TensorCacheIndex

    index = TensorCacheIndex.load(model_dir, "")
    rng = np.random.default_rng(0)
    for shard in index.shards:
        with (model_dir / shard.dataPath).open("wb") as f:
            for record in shard.records:
                count = int(np.prod(record.shape))
                if record.dtype.startswith("float"):
                    array = (rng.standard_normal(count, np.float32) * 0.02).astype(record.dtype)
                else:
                    info = np.iinfo(record.dtype)
                    array = rng.integers(0, info.max, count, dtype=record.dtype, endpoint=True)
                f.write(array.tobytes())
    return index.param_bytes


def timed(func, runs: int = 5) -> float:
    """Median seconds of `func()` (which synchronizes) after one warm-up."""
    func()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@section("speed-mlc")
def speed_mlc(root: Path, device: str) -> None:
    from mlc.runtime.compiled_model import CompiledModel

    big = next((root / "big").iterdir())
    weight_bytes = fill_random_shards(big)
    model = CompiledModel(
        big, device=device, verify_weights=False, max_batch_size=16, kv_cache_tokens=16 * 2048
    )
    rng = np.random.default_rng(1)
    speed = RESULTS["speed"].setdefault("mlc", {"weight_bytes": weight_bytes})
    for length in (128, 2000):
        if length > model.context_window_size:
            continue
        ids = rng.integers(3, model.vocab_size, length).astype(np.int32)

        def prefill(ids=ids):
            model.reset()
            model.prefill(ids)

        speed[f"prefill_{length}_tok_s"] = length / timed(prefill)
    steps = 64

    def decode_one():
        model.reset()
        logits = model.prefill(rng.integers(3, model.vocab_size, 128).astype(np.int32))
        start = time.perf_counter()
        for _ in range(steps):
            logits = model.decode(int(np.argmax(logits)))
        return time.perf_counter() - start

    decode_one()
    seconds = statistics.median(decode_one() for _ in range(3))
    speed["decode_b1_tok_s"] = steps / seconds
    speed["decode_b1_bandwidth_fraction"] = steps / seconds * weight_bytes / BANDWIDTH
    model.reset()

    def decode_batch():
        seqs = list(range(1, 17))
        logits = []
        for s in seqs:
            model.add_sequence(s)
            chunk = rng.integers(3, model.vocab_size, 128).astype(np.int32)
            logits.append(model.forward_prefill([s], [chunk])[0])
        tokens = [int(np.argmax(x)) for x in logits]
        start = time.perf_counter()
        for _ in range(steps):
            out = model.forward_decode(seqs, tokens)
            tokens = [int(x) for x in out.argmax(-1)]
        elapsed = time.perf_counter() - start
        for s in seqs:
            model.remove_sequence(s)
        return elapsed

    decode_batch()
    seconds = statistics.median(decode_batch() for _ in range(3))
    speed["decode_b16_tok_s"] = 16 * steps / seconds
    print(speed, flush=True)


TINYLLAMA = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
)  # fmt: skip


@section("speed-torch")
def speed_torch(compile_it: bool, device: str = "cuda", shape: dict = TINYLLAMA) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.float16).eval()
    speed = RESULTS["speed"].setdefault("torch_fp16", {})
    speed["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())

    def sync_timed(func, runs: int = 5) -> float:
        func()
        synchronize()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            func()
            synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.inference_mode():
        for length in (128, 2000):
            ids = torch.randint(3, 32000, (1, length), device=device)
            speed[f"prefill_{length}_tok_s"] = length / sync_timed(lambda ids=ids: model(ids))
        for batch_size in (1, 16):
            ids = torch.randint(3, 32000, (batch_size, 128), device=device)

            def generate(new_tokens: int, ids=ids):
                model.generate(
                    ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    cache_implementation="static",
                )  # fmt: skip

            # Decode alone: 64 new tokens less 1 (the prefill and the first token).
            seconds = sync_timed(lambda g=generate: g(64), 3) - sync_timed(
                lambda g=generate: g(1), 3
            )
            speed[f"decode_static_b{batch_size}_tok_s"] = batch_size * 63 / seconds
        if compile_it:
            compiled = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

            def forward(*args, **kwargs):
                # Each call is a new CUDA-graph step: the static cache's counters are inputs.
                torch.compiler.cudagraph_mark_step_begin()
                return compiled(*args, **kwargs)

            model.forward = forward
            ids = torch.randint(3, 32000, (1, 128), device=device)

            def generate_compiled():
                model.generate(
                    ids, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                    cache_implementation="static",
                )  # fmt: skip

            start = time.perf_counter()
            generate_compiled()
            speed["compile_seconds"] = time.perf_counter() - start
            seconds = sync_timed(generate_compiled, runs=3)
            speed["generate_compiled_b1_tok_s"] = 64 / seconds  # prefill of 128 included
    print(speed, flush=True)


def table() -> str:
    lines = ["build                      steps  max|err|   of range  argmax  ok"]
    for p in RESULTS["parity"]:
        lines.append(
            f"{p['build']:<26} {p['steps']:>5}  {p['max_abs_error']:.3g}  "
            f"{p['relative']:.2%}  {p['argmax_agree']:>6}  {p['ok']}"
        )
    if RESULTS["batch"]:
        lines.append(f"batch of 16 vs one at a time: {RESULTS['batch']}")
    for engine, speed in RESULTS["speed"].items():
        lines.append(f"{engine}: " + ", ".join(f"{k} {v:.4g}" for k, v in speed.items()))
    lines.append(f"errors: {len(RESULTS['errors'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("carried", type=Path)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to leave out")
    args = parser.parse_args()
    if args.device == "cuda":
        preload_cudart()
    if "parity" not in args.skip:
        parity(args.carried, args.device)
    if "batch" not in args.skip:
        batch(args.carried, args.device)
    if "speed" not in args.skip and (args.carried / "big").is_dir():
        speed_mlc(args.carried, args.device)
    if "torch" not in args.skip:
        speed_torch(args.compile)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(RESULTS, indent=2))
    print(table())


if __name__ == "__main__":
    main()
