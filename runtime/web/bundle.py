"""`tvmjs.js`: the TVM JavaScript runtime as one plain ES module that a browser can import.

The apache-tvm wheel ships the runtime as TypeScript (`tvm/web/src`), which browsers cannot run.
`deno bundle` (esbuild, which Deno fetches from npm on first use) bundles it with our WASI
(`wasi.ts`) through `tvmjs_entry.ts`, once per input: the result is cached under
`~/.cache/mlc/web_chat/<key>/`, where `<key>` hashes the sources and the Deno version.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..host import cache_dir
from .deno import deno_env, find_deno, tvm_web_sources

BUNDLE_NAME = "tvmjs.js"
ENTRY = Path(__file__).with_name("tvmjs_entry.ts")
WASI = Path(__file__).with_name("wasi.ts")
# `compact.ts` imports a file that TVM's own web build generates (absent from the wheel); our
# WASI replaces it. `require("perf_hooks")` and `require("ws")` sit in Node-only branches.
WASI_STUB = "export default class EmccWASI {}\n"
EXTERNAL = ("perf_hooks", "ws")


def _deno_version(deno: Path) -> str:
    result = subprocess.run(
        [str(deno), "--version"], capture_output=True, text=True, env=deno_env(), check=True
    )
    return result.stdout.splitlines()[0]


def _cache_key(deno: Path, sources: Path) -> str:
    digest = hashlib.sha256(_deno_version(deno).encode())
    for path in [*sorted(sources.glob("*.ts")), ENTRY, WASI]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tvmjs_bundle(log: Callable[[str], None] | None = None) -> Path:
    """The bundled runtime, made on first use (a second; esbuild's download the first time)."""
    deno, sources = find_deno(), tvm_web_sources()
    done = cache_dir("web_chat", _cache_key(deno, sources))
    bundle = done / BUNDLE_NAME
    if bundle.is_file():
        return bundle
    if log is not None:
        log(f"Bundling the TVM JavaScript runtime with deno bundle (once, cached in {done}) ...")
    done.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=done.parent) as tmp:
        work = Path(tmp)
        for path in sources.glob("*.ts"):
            shutil.copy(path, work / path.name)
        (work / "tvmjs_runtime_wasi.js").write_text(WASI_STUB)
        shutil.copy(ENTRY, work / ENTRY.name)
        shutil.copy(WASI, work / WASI.name)
        out = work / "out" / BUNDLE_NAME
        cmd = [str(deno), "bundle", "--platform", "browser", "--no-config", "--no-lock"]
        cmd += ["--unstable-sloppy-imports", *(f"--external={name}" for name in EXTERNAL)]
        cmd += ["-o", str(out), str(work / ENTRY.name)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=deno_env(), cwd=work)
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"deno bundle failed ({result.returncode}):\n{result.stderr}")
        try:
            out.parent.rename(done)
        except OSError:  # another process finished first: use its bundle
            if not bundle.is_file():
                raise
    return bundle
