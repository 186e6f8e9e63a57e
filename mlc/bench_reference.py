"""Reference engines for `mlc bench --compare`: llama.cpp (through `llama-cpp-python`) and
`transformers` on the weights the artifact was built from, each in its own process so that
its peak memory is its own.

    python -m mlc.bench_reference {llama.cpp,torch} SOURCE --prompt-len P --gen-len G
        --runs R --threads T [--gguf-type Q4_0]     → one JSON line
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlc.runtime.host import cache_dir

# The nearest llama.cpp format to each of our codes.
GGUF_TYPE = {
    "q0f32": "F32",
    "q0f16": "F16",
    "q8f16_1": "Q8_0",
    "q4f16_1": "Q4_0",
    "q4f32_1": "Q4_0",
    "q4a8_1": "Q4_0",
    "q3f16_1": "Q4_0",  # the gguf package writes no 3-bit type
}
CACHE = cache_dir("bench")


def peak_rss_mb() -> float:
    """This process's own peak (VmHWM): `ru_maxrss` would include the parent's peak, which
    Linux carries across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_runs(prefill, decode_step, prompt: list[int], gen_len: int, runs: int):
    prefill_s, decode_s = [], []
    for run in range(runs + 1):  # run 0 warms up
        t0 = time.perf_counter()
        prefill(prompt)
        t1 = time.perf_counter()
        for i in range(gen_len):
            decode_step(prompt[i % len(prompt)])
        t2 = time.perf_counter()
        if run:
            prefill_s.append(t1 - t0)
            decode_s.append(t2 - t1)
    return statistics.median(prefill_s), statistics.median(decode_s)


def gguf_for(source: Path, tensor_type: str) -> Path:
    """The source model as GGUF of `tensor_type`: itself if it is a GGUF file, else exported by
    our own code once and cached under ~/.cache/mlc/bench."""
    if source.suffix == ".gguf":
        return source
    from mlc.gguf.export import export_gguf

    key = hashlib.sha256(f"{source.resolve()}:{tensor_type}".encode()).hexdigest()[:16]
    path = CACHE / f"{source.name}-{tensor_type}-{key}.gguf"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        print(f"exporting {source} to {tensor_type} GGUF for llama.cpp ...", file=sys.stderr)
        export_gguf(source, partial, tensor_type)
        partial.replace(path)
    return path


def _disable_extra_buffer_types(llama_cpp) -> None:
    """llama.cpp without its repacked/AMX weight layouts (`use_extra_bufts = false`): on
    virtual machines whose CPU reports AMX the kernel may not grant it, and llama.cpp then
    crashes in its first matmul."""
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


def llama_cpp(source: Path, args: argparse.Namespace) -> dict[str, Any]:
    try:
        import llama_cpp
    except ImportError as err:
        raise SystemExit(
            "--compare llama.cpp needs llama-cpp-python: pip install -e '.[bench]'"
        ) from err
    path = gguf_for(source, args.gguf_type)
    if args.no_extra_bufts:
        _disable_extra_buffer_types(llama_cpp)
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=args.prompt_len + args.gen_len + 8,
        n_batch=max(args.prompt_len, 8),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    load = time.perf_counter() - start
    prompt = np.random.default_rng(0).integers(3, llm.n_vocab(), args.prompt_len).tolist()

    def prefill(tokens):
        llm.reset()
        llm.eval(tokens)

    prefill_s, decode_s = _timed_runs(
        prefill, lambda t: llm.eval([t]), prompt, args.gen_len, args.runs
    )
    return {
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {path.name}"
        + (", no extra buffer types" if args.no_extra_bufts else ""),
        "load_seconds": load,
        "prefill_tokens_per_s": args.prompt_len / prefill_s,
        "decode_tokens_per_s": args.gen_len / decode_s if args.gen_len else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    }


def torch_reference(source: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if source.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()
    load = time.perf_counter() - start
    prompt = np.random.default_rng(0).integers(3, model.config.vocab_size, args.prompt_len)
    state: dict[str, Any] = {}

    @torch.no_grad()
    def prefill(tokens):
        out = model(torch.tensor([tokens]), use_cache=True)
        state["past"] = out.past_key_values

    @torch.no_grad()
    def decode_step(token):
        out = model(torch.tensor([[token]]), past_key_values=state["past"], use_cache=True)
        state["past"] = out.past_key_values

    prefill_s, decode_s = _timed_runs(
        prefill, decode_step, prompt.tolist(), args.gen_len, args.runs
    )
    return {
        "engine": f"transformers (torch {torch.__version__}, fp32, eager)",
        "load_seconds": load,
        "prefill_tokens_per_s": args.prompt_len / prefill_s,
        "decode_tokens_per_s": args.gen_len / decode_s if args.gen_len else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    }


REFERENCES = {"llama.cpp": llama_cpp, "torch": torch_reference}


def run_reference(
    kind: str,
    source: Path,
    quantization: str,
    prompt_len: int,
    gen_len: int,
    runs: int,
    threads: int,
) -> dict[str, Any]:
    """Run `kind` in a child process; returns its JSON result."""
    command = [
        sys.executable, "-m", "mlc.bench_reference", kind, str(source),
        "--prompt-len", str(prompt_len), "--gen-len", str(gen_len), "--runs", str(runs),
        "--threads", str(threads), "--gguf-type", GGUF_TYPE.get(quantization, "Q4_0"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if kind == "llama.cpp" and done.returncode < 0:  # killed by a signal: see
        # `_disable_extra_buffer_types`; run again without the repacked layouts
        done = subprocess.run([*command, "--no-extra-bufts"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"the {kind} reference failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(REFERENCES))
    parser.add_argument("source", type=Path)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gguf-type", default="Q4_0")
    parser.add_argument("--no-extra-bufts", action="store_true")
    args = parser.parse_args()
    print(json.dumps(REFERENCES[args.kind](args.source, args)))


if __name__ == "__main__":
    main()
