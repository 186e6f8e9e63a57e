"""The `mlc` command as a user runs it: help, build, one-shot and interactive chat."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from mlc.cli import main
from mlc.testing.random_model import save_llama

GQA = {"num_key_value_heads": 2}


@pytest.mark.parametrize("command", [[], *([name] for name in main.commands)])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_build_then_one_shot_chat(tmp_path):
    model = save_llama(tmp_path / "tiny-chat", **GQA)
    result = subprocess.run(
        [
            "mlc",
            "build",
            str(model),
            "--target",
            "llvm",
            "--quantization",
            "q0f32",
            "--conv-template",
            "LM",
            "-o",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    built = tmp_path / "dist" / "tiny-chat-q0f32"
    names = {p.name for p in built.iterdir()}
    assert {
        "mlc-chat-config.json",
        "tensor-cache.json",
        "params_shard_0.bin",
        "tiny-chat-q0f32-llvm.so",
        "tokenizer.json",
    } <= names
    result = subprocess.run(
        [
            "mlc",
            "chat",
            str(built),
            "--prompt",
            "Once upon a time",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_cli_errors_are_one_clear_line(tmp_path):
    result = subprocess.run(
        ["mlc", "build", str(tmp_path / "missing"), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: model directory not found")
    assert "Traceback" not in result.stderr
    result = subprocess.run(
        ["mlc", "chat", str(tmp_path / "missing")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1 and "error: model directory not found" in result.stderr


def test_interactive_chat_commands(tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    session = "/help\nHello there\n/stats\n/reset\n/bogus\nAgain\n/exit\n"
    result = subprocess.run(
        ["mlc", "chat", str(built), "--max-tokens", "5"],
        input=session,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "/reset" in out and "Ctrl-C" in out  # the help text
    assert "prefill:" in out and "decode:" in out  # /stats
    assert "(conversation reset)" in out
    assert "unknown command /bogus" in out


def test_ctrl_c_stops_the_answer_but_keeps_the_chat(tiny_builds, tmp_path):
    _, long_context = tiny_builds.get("gqa", build_options={"context_window_size": 16384}, **GQA)
    built = tmp_path / long_context.name
    shutil.copytree(long_context, built)
    # No EOS: the random model must keep talking until it is interrupted.
    config = json.loads((built / "mlc-chat-config.json").read_text())
    config["eos_token_id"] = None
    (built / "mlc-chat-config.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "mlc.cli", "chat", str(built), "--max-tokens", "16000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("Once upon a time\n")
    proc.stdin.flush()
    proc.stdout.readline()  # the banner
    time.sleep(1.5)  # well inside the ~16k-token answer
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("/stats\n/exit\n", timeout=120)
    assert proc.returncode == 0, err
    assert "[stopped]" in out
    assert "decode:" in out  # the chat went on after the interruption


def test_runtime_commands_run_without_torch(tiny_builds):
    """`mlc chat/bench/serve` keep PyTorch out of the process (`tvm_ffi` would import it, about
    200 MB resident): the runtime must then work, and torch must really be absent."""
    _, built = tiny_builds.get("gqa", **GQA)
    code = (
        "import sys\n"
        "from mlc.lean_runtime import skip_torch\n"
        "skip_torch()\n"
        "from mlc.runtime import CompiledModel\n"
        f"engine = CompiledModel({str(built)!r})\n"
        "logits = engine.prefill([1, 2, 3])\n"
        "assert logits.shape[-1] > 0\n"
        "print(sys.modules.get('torch') is None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


def test_build_target_help_lists_every_preset():
    from mlc.targets import TARGETS

    result = CliRunner().invoke(main, ["build", "--target", "help"])
    assert result.exit_code == 0, result.output
    for name in ["auto", *TARGETS]:
        assert f"  {name} " in result.output
