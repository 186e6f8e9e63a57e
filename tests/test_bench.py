"""`mlc bench` runs on a tiny model and compares against references in the same run (no timing
is asserted: benchmarks are not tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess

GQA = {"num_key_value_heads": 2}


def _bench(built, *extra: str, probe_mb: int = 0) -> subprocess.CompletedProcess:
    command = ["mlc", "bench", str(built), "--prompt-len", "12", "--gen-len", "6", "--runs", "1"]
    command += ["--threads", "1", "--bandwidth-probe-mb", str(probe_mb)]
    return subprocess.run([*command, *extra], capture_output=True, text=True)


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


def test_bench_reports_the_decode_fraction_of_the_bandwidth_limit(tiny_builds):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_dir, built = tiny_builds.get("gqa", **GQA)
    done = _bench(built, "--json", probe_mb=64)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    bandwidth = result["bandwidth"]
    assert bandwidth["read_bandwidth_gb_s"] > 0 and bandwidth["probe_threads"] == 1
    # What a q0f32 decode step reads, counted from transformers' own parameters: every float32
    # weight once, one row of the (untied) embedding, K and V of 12 + 3.5 positions on average.
    config = AutoConfig.from_pretrained(hf_dir)
    assert not config.tie_word_embeddings
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    assert bandwidth["weight_bytes"] == 4 * (params + config.hidden_size)
    head_dim = config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4 * 15.5
    assert bandwidth["kv_cache_bytes"] == kv
    per_token = bandwidth["weight_bytes"] + kv
    limit = bandwidth["read_bandwidth_gb_s"] * 1e9 / per_token
    assert abs(bandwidth["fraction"] - result["decode_tokens_per_s"] / limit) < 1e-9
    table = _bench(built, probe_mb=64)
    assert "of the bandwidth limit" in table.stdout, table.stderr
    skipped = _bench(built, "--json")
    assert json.loads(skipped.stdout)["bandwidth"] is None


def test_decode_bytes_count_one_embedding_row_tied_heads_chosen_experts_and_windows(tmp_path):
    from mlc.bandwidth import decode_bytes_per_token

    def build_dir(model_config: dict, records: list[tuple[str, list[int], int]]):
        (tmp_path / "mlc-chat-config.json").write_text(json.dumps({"model_config": model_config}))
        shard = [{"name": n, "shape": s, "nbytes": b} for n, s, b in records]
        (tmp_path / "tensor-cache.json").write_text(json.dumps({"records": [{"records": shard}]}))
        return tmp_path

    embed = ("embed_tokens.weight", [100, 8], 3200)
    dense = build_dir({"tie_word_embeddings": False}, [embed, ("lm_head.weight", [100, 8], 3200)])
    assert decode_bytes_per_token(dense, 10) == {"weight_bytes": 3232, "kv_cache_bytes": 0}
    tied = build_dir({"tie_word_embeddings": True}, [embed])
    assert decode_bytes_per_token(tied, 10)["weight_bytes"] == 3200
    moe = {"num_experts": 8, "num_experts_per_tok": 2}
    experts = [("layers.0.mlp.experts_down.weight", [8, 8, 4], 1024), ("layers.0.router", [8], 32)]
    assert decode_bytes_per_token(build_dir(moe, experts), 10)["weight_bytes"] == 256 + 32
    layers = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32}
    window = {**layers, "sliding_window": 4, "sliding_layers": [1], "kv_cache_dtype": "float16"}
    kv = decode_bytes_per_token(build_dir(window, []), 10)["kv_cache_bytes"]
    assert kv == 2 * 4 * 8 * 2 * (10 + 4)  # layer 0 reads 10 positions, sliding layer 1 four


def test_bandwidth_probe_failure_is_reported_not_raised():
    from mlc.bandwidth import probe_in_subprocess

    assert "too small" in probe_in_subprocess(threads=1, mb=0)["error"]


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
