"""Find Deno and run `run_model.ts` (greedy generation with a `.wasm` model) in it.

Deno comes from npm: `npm install --prefix ~/.cache/mlc/deno @deno/linux-x64-glibc` puts the
binary where `find_deno` looks; `MLC_DENO` names another one. On a machine without a GPU its
`navigator.gpu` finds Mesa's software Vulkan device (Debian's `mesa-vulkan-drivers`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..host import ToolMissingError, cache_dir

DENO_ENV = "MLC_DENO"
DRIVER = Path(__file__).with_name("run_model.ts")
NPM_DENO = Path("node_modules") / "@deno" / "linux-x64-glibc" / "deno"
INSTALL_HINT = (
    "install it with `npm install --prefix ~/.cache/mlc/deno @deno/linux-x64-glibc` "
    f"(or set {DENO_ENV} to a deno binary); WebGPU without a GPU also needs "
    "`apt-get install mesa-vulkan-drivers`"
)


def deno_dir() -> Path:
    return cache_dir("deno")


def deno_env(runtime_dir: str | None = None) -> dict[str, str]:
    """The environment for Deno: its own cache (npm packages it fetches, such as esbuild)
    under ours, no update check (no network at test time), and a writable XDG runtime
    directory, which its WebGPU looks for (absent in CI shells)."""
    env = {**os.environ, "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}
    env.setdefault("DENO_DIR", str(deno_dir() / "deno_dir"))
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = runtime_dir
    return env


def find_deno() -> Path:
    """`$MLC_DENO`, else the npm install under `~/.cache/mlc/deno`, else `deno` on PATH."""
    if os.environ.get(DENO_ENV):
        path = Path(os.environ[DENO_ENV])
        if not path.is_file():
            raise ToolMissingError(f"{DENO_ENV}={path} is not a file; {INSTALL_HINT}")
        return path
    for path in (deno_dir() / NPM_DENO, shutil.which("deno")):
        if path and Path(path).is_file():
            return Path(path)
    raise ToolMissingError(f"Deno was not found; {INSTALL_HINT}")


def tvm_web_sources() -> Path:
    """The TypeScript runtime shipped in the apache-tvm wheel (matches its FFI by build)."""
    import tvm  # the JavaScript runtime must match this wheel's runtime ABI

    path = Path(tvm.__file__).parent / "web" / "src"
    if not (path / "runtime.ts").is_file():
        raise FileNotFoundError(f"the apache-tvm wheel has no web runtime sources at {path}")
    return path


def run_greedy(
    model_dir: Path, prompt: list[int], num_tokens: int, timeout: float = 600
) -> dict[str, Any]:
    """Prefill `prompt`, then decode greedily until `num_tokens` tokens; returns the driver's
    JSON: `tokens`, `logits` (one list per token: the logits that chose it) and `device`."""
    deno = find_deno()
    with tempfile.TemporaryDirectory(prefix="mlc-deno-") as runtime_dir:
        env = deno_env(runtime_dir)
        cmd = [
            str(deno),
            "run",
            "--allow-read",
            "--allow-write",
            "--allow-env",
            "--unstable-sloppy-imports",
            str(DRIVER),
            "--tvm-web",
            str(tvm_web_sources()),
            "--model",
            str(model_dir),
            "--prompt",
            ",".join(map(str, prompt)),
            "--tokens",
            str(num_tokens),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"deno run_model.ts failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
