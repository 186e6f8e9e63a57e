"""`mlc bench`: prefill and decode speed of a built model, as medians after a warm-up."""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from mlc.bench_reference import peak_rss_mb
from mlc.runtime import CompiledModel, GenerationConfig
from mlc.runtime.chat_config import ChatConfig


@dataclasses.dataclass
class BenchResult:
    model: str
    prompt_len: int
    gen_len: int
    runs: int
    load_seconds: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    time_to_first_token_s: float
    peak_rss_mb: float
    machine: str
    threads: int
    quantization: str = ""
    references: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    speculative: dict[str, Any] | None = None  # `mlc.bench_speculative`
    bandwidth: dict[str, Any] | None = None  # `bandwidth_fraction`

    def table(self) -> str:
        lines = [
            f"model            {self.model}",
            f"machine          {self.machine}",
            f"load             {self.load_seconds:.2f} s",
            f"prefill          {self.prefill_tokens_per_s:.1f} tok/s ({self.prompt_len} tok)",
            f"decode           {self.decode_tokens_per_s:.2f} tok/s ({self.gen_len} tok)",
            f"first token      {self.time_to_first_token_s * 1000:.0f} ms",
            f"peak memory      {self.peak_rss_mb:.0f} MB (resident)",
            f"runs             median of {self.runs} after a warm-up, {self.threads} threads",
        ]
        for ref in self.references:
            lines += [
                f"vs {ref['engine']}",
                f"  prefill        {ref['prefill_tokens_per_s']:.1f} tok/s   "
                f"mlc/reference {ref['prefill_ratio']:.2f}x",
                f"  decode         {ref['decode_tokens_per_s']:.2f} tok/s   "
                f"mlc/reference {ref['decode_ratio']:.2f}x",
                f"  load           {ref['load_seconds']:.2f} s",
                f"  peak memory    {ref['peak_rss_mb']:.0f} MB (resident)",
            ]
        if self.bandwidth:
            lines += _bandwidth_lines(self.bandwidth)
        if self.speculative:
            spec = self.speculative
            lines += [
                f"speculative      {spec['method']}: {spec['task']}, "
                f"{spec['answer_tokens']} tokens",
                f"  decode         {spec['speculative_decode_tokens_per_s']:.2f} tok/s   "
                f"plain {spec['plain_decode_tokens_per_s']:.2f} tok/s   "
                f"speculative/plain {spec['speedup']:.2f}x",
                f"  drafts kept    {spec['draft_acceptance'] * 100:.0f} %, answers identical",
            ]
        return "\n".join(lines)


def _bandwidth_lines(bandwidth: dict[str, Any]) -> list[str]:
    if "read_bandwidth_gb_s" not in bandwidth:
        return [f"bandwidth        not measured: {bandwidth['error']}"]
    b = bandwidth
    return [
        f"bandwidth        {b['read_bandwidth_gb_s']:.1f} GB/s read (probe after the decode runs: "
        f"{b['probe_mb']} MiB, {b['probe_threads']} threads, median of {b['probe_runs']})",
        f"  decode reads   {b['bytes_per_token'] / 1e6:.1f} MB/token (weights "
        f"{b['weight_bytes'] / 1e6:.1f}, KV cache {b['kv_cache_bytes'] / 1e6:.1f})"
        f"   limit {b['limit_tokens_per_s']:.1f} tok/s",
        f"  decode         {b['fraction'] * 100:.0f} % of the bandwidth limit",
    ]


def machine_description() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count(logical=True)} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    )


def thread_count() -> int:
    import os

    return int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))


def run_bench(
    model_dir: Path,
    prompt_len: int,
    gen_len: int,
    runs: int,
    device: str = "cpu",
    compare: tuple[str, ...] = (),
    speculative: str | None = None,
    draft_model: Path | None = None,
    probe_mb: int = 1024,
) -> BenchResult:
    if speculative is not None:
        GenerationConfig(speculative=speculative).validate()  # before minutes of timing
    if (speculative == "draft-model") != (draft_model is not None):
        raise ValueError("--draft-model DIR goes with --speculative draft-model, and only with it")
    start = time.perf_counter()
    engine = CompiledModel(model_dir, device=device)
    load_seconds = time.perf_counter() - start
    if prompt_len + gen_len > engine.context_window_size:
        raise ValueError(
            f"prompt-len + gen-len = {prompt_len + gen_len} exceeds the context window "
            f"({engine.context_window_size})"
        )
    prompt = np.random.default_rng(0).integers(3, engine.vocab_size, size=prompt_len).tolist()
    prefill_times, decode_times = [], []
    for run in range(runs + 1):  # run 0 warms up caches and the thread pool
        engine.reset()
        t0 = time.perf_counter()
        logits = engine.prefill(prompt)
        t1 = time.perf_counter()
        for _ in range(gen_len):
            logits = engine.decode(int(np.argmax(logits)))
        t2 = time.perf_counter()
        if run:
            prefill_times.append(t1 - t0)
            decode_times.append(t2 - t1)
    prefill_s, decode_s = statistics.median(prefill_times), statistics.median(decode_times)
    result = BenchResult(
        model=str(model_dir),
        prompt_len=prompt_len,
        gen_len=gen_len,
        runs=runs,
        load_seconds=load_seconds,
        prefill_tokens_per_s=prompt_len / prefill_s,
        decode_tokens_per_s=gen_len / decode_s if gen_len else 0.0,
        time_to_first_token_s=prefill_s,
        peak_rss_mb=peak_rss_mb(),
        machine=machine_description(),
        threads=thread_count(),
        quantization=engine.chat_config.quantization,
    )
    if gen_len and probe_mb:
        result.bandwidth = bandwidth_fraction(result, device, probe_mb)
    for kind in compare:
        result.references.append(_compare(result, engine.chat_config, kind))
    if speculative is not None:
        from mlc.bench_speculative import run_speculative_bench

        del engine, logits  # the chat module loads its own copy
        result.speculative = run_speculative_bench(
            model_dir, speculative, gen_len, runs, device, draft_model
        )
    return result


def bandwidth_fraction(result: BenchResult, device: str, probe_mb: int) -> dict[str, Any]:
    """The read bandwidth probed now, the bytes a decode step of this run reads, and the
    fraction of the resulting speed limit the decode reached."""
    from mlc.bandwidth import decode_bytes_per_token, probe_in_subprocess

    if device.split(":")[0] != "cpu":
        return {"error": f"the probe measures the CPU's memory, not --device {device}'s"}
    probe = probe_in_subprocess(result.threads, probe_mb)
    if "error" in probe:
        return probe
    context = result.prompt_len + (result.gen_len + 1) / 2  # mean positions a step attends to
    read = decode_bytes_per_token(Path(result.model), context)
    per_token = read["weight_bytes"] + read["kv_cache_bytes"]
    limit = probe["read_bandwidth_gb_s"] * 1e9 / per_token
    return {
        **probe,
        **read,
        "bytes_per_token": per_token,
        "limit_tokens_per_s": limit,
        "fraction": result.decode_tokens_per_s / limit,
    }


def _compare(result: BenchResult, chat_config: ChatConfig, kind: str) -> dict[str, Any]:
    """Run a reference engine on the artifact's source weights, same shape and threads."""
    from mlc.bench_reference import run_reference

    source = Path(chat_config.source_model)
    if not chat_config.source_model or not source.exists():
        raise ValueError(
            f"--compare {kind} needs the weights the model was built from, but "
            f"{source or 'no source_model'} is not there; rebuild from a local model"
        )
    ref = run_reference(
        kind, source, result.quantization, result.prompt_len, result.gen_len, result.runs,
        result.threads,
    )  # fmt: skip
    ref["prefill_ratio"] = result.prefill_tokens_per_s / ref["prefill_tokens_per_s"]
    ref["decode_ratio"] = (
        result.decode_tokens_per_s / ref["decode_tokens_per_s"] if result.gen_len else 0.0
    )
    return ref


def print_result(result: BenchResult, as_json: bool) -> None:
    print(json.dumps(dataclasses.asdict(result), indent=2) if as_json else result.table())
