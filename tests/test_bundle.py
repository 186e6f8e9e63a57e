"""`mlc bundle`: the runtime without the TVM compiler loads a build and answers as the full
install does, and never maps `libtvm_compiler.so`."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import pytest

from mlc.bundle import bundle_size, write_bundle
from mlc.runtime import ChatModule, GenerationConfig

GQA = {"num_key_value_heads": 2}
PROMPT = "Once upon a time"

CHILD = """
import json, sys
from mlc import ChatModule, GenerationConfig
import tvm
cm = ChatModule(sys.argv[1])
answer = cm.generate(sys.argv[2], GenerationConfig(temperature=0, max_tokens=12))
maps = open("/proc/self/maps").read()
print(json.dumps({"answer": answer, "tvm": tvm.__file__,
                  "compiler": "libtvm_compiler" in maps, "runtime": "libtvm_runtime" in maps}))
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("bundle") / "out")


def test_the_bundle_holds_no_compiler_and_is_small(bundle):
    assert not list(bundle.rglob("libtvm_compiler*"))
    assert list(bundle.rglob("libtvm_runtime.so")) and (bundle / "mlc" / "runtime").is_dir()
    assert not (bundle / "mlc" / "build.py").exists()  # the runtime only
    assert bundle_size(bundle) < 64 * 2**20


def test_the_bundle_answers_as_the_full_install_without_the_compiler(bundle, tiny_builds):
    _, built = tiny_builds.get("gqa", **GQA)
    expected = ChatModule(str(built)).generate(
        PROMPT, GenerationConfig(temperature=0, max_tokens=12)
    )
    # The bundle first on the path; site-packages after it for numpy, tokenizers and jinja2.
    path = f"{bundle}:{sysconfig.get_paths()['purelib']}"
    run = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(built), PROMPT],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        cwd=bundle,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["tvm"].startswith(str(bundle))
    assert result["runtime"] and not result["compiler"]
    assert result["answer"] == expected


def test_a_bundle_goes_into_an_empty_directory(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_bundle(tmp_path / "full")
