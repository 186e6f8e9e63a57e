"""`mlc bench` runs on a tiny model and compares against references in the same run (no timing
is asserted: benchmarks are not tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess

GQA = {"num_key_value_heads": 2}


def _bench(built, *extra: str) -> subprocess.CompletedProcess:
    command = ["mlc", "bench", str(built), "--prompt-len", "12", "--gen-len", "6", "--runs", "1"]
    return subprocess.run([*command, "--threads", "1", *extra], capture_output=True, text=True)


def test_bench_reports_speed_memory_and_a_torch_comparison(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    done = _bench(built, "--json", "--compare", "torch")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert result["peak_rss_mb"] > 0 and result["threads"] == 1
    (torch_ref,) = result["references"]
    assert "transformers" in torch_ref["engine"]
    assert torch_ref["decode_ratio"] > 0 and torch_ref["prefill_ratio"] > 0
    table = _bench(built)
    assert table.returncode == 0 and "decode" in table.stdout and "1 threads" in table.stdout


def test_bench_compares_with_llama_cpp_or_says_what_to_install(tiny_builds):
    _, built = tiny_builds.get("gqa", quantization="q4f32_1", **GQA)
    done = _bench(built, "--json", "--compare", "llama.cpp")
    if importlib.util.find_spec("llama_cpp") is None:
        assert done.returncode == 1
        assert "pip install" in done.stderr and "llama-cpp-python" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    (ref,) = json.loads(done.stdout)["references"]
    assert "llama.cpp" in ref["engine"] and "Q4_0" in ref["engine"]
    assert ref["decode_ratio"] > 0


def test_bench_times_speculative_decoding_against_plain_decoding(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    done = _bench(built, "--json", "--speculative", "prompt-lookup")
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)["speculative"]
    assert spec["method"] == "prompt-lookup" and spec["identical_answers"]
    assert spec["plain_decode_tokens_per_s"] > 0 and spec["speculative_decode_tokens_per_s"] > 0
    assert (
        spec["answer_tokens"] > 0
        and "speculative/plain" in _bench(built, "--speculative", "prompt-lookup").stdout
    )
    wrong = _bench(built, "--speculative", "medusa")
    assert wrong.returncode == 1 and "speculative must be one of prompt-lookup" in wrong.stderr


def test_bench_times_a_draft_model(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    _, draft = tiny_builds.get("gqa", "q4a8_1", **GQA)
    done = _bench(built, "--json", "--speculative", "draft-model", "--draft-model", str(draft))
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)["speculative"]
    assert spec["method"] == f"draft-model ({draft.name})" and spec["identical_answers"]
    missing = _bench(built, "--speculative", "draft-model")
    assert missing.returncode == 1 and "--draft-model DIR goes with" in missing.stderr
