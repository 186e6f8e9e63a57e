"""The TVM web runtime compiled with emcc, once per machine, and the link of a model `.wasm`.

The apache-tvm wheel ships the runtime's C++ sources (`tvm/web/emcc/*.cc`, which include most
of `tvm/src/runtime` and the tvm-ffi sources) but not a few headers they need; ours are in
`web_runtime_shims/`. The sources reach those headers through relative paths, so they are
compiled from a copy laid out like a TVM checkout, under `~/.cache/mlc/web_runtime/<key>/`,
where `<key>` hashes everything the objects depend on (TVM version, emcc version, shims, flags).

Debian's emcc (LLVM 14) cannot read the bitcode of the wheel's LLVM 22, so the model's host
code comes as wasm object files, which emcc's wasm-ld links with these runtime objects.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tvm
import tvm_ffi

from mlc.runtime.host import ToolMissingError, cache_dir

RUNTIME_SOURCES = ("wasm_runtime.cc", "webgpu_runtime.cc", "tvmjs_support.cc")
SHIMS_DIR = Path(__file__).parent / "web_runtime_shims"
COMPILE_FLAGS = ("-O3", "-std=c++17", "-Wno-ignored-attributes")
# The flags of the wheel's own `tvm.support.emcc.create_tvmjs_wasm`: a standalone wasm whose
# imports the TVM JavaScript runtime provides (WASI and the `env` functions it defines).
# -O1, not -O3: the objects are optimised already, and wasm-opt's -O2/-O3 only shrink the
# file (4.1 MB instead of 6.8 MB for a tiny model, less once served compressed) for minutes
# of link time on 2 cores instead of 2 seconds.
LINK_FLAGS = (
    "-O1",
    "--no-entry",
    "-s",
    "WASM_BIGINT=1",
    "-s",
    "ERROR_ON_UNDEFINED_SYMBOLS=0",
    "-s",
    "STANDALONE_WASM=1",
    "-s",
    "ALLOW_MEMORY_GROWTH=1",
    "-s",
    "TOTAL_MEMORY=160MB",
)
INSTALL_HINT = "install Emscripten with `apt-get install emscripten` (Debian/Ubuntu)"


def find_emcc() -> str:
    """The emcc executable, or ToolMissingError saying how to install it."""
    emcc = shutil.which("emcc")
    if emcc is None:
        raise ToolMissingError(f"the webgpu target links its .wasm with emcc: {INSTALL_HINT}")
    return emcc


def _tvm_dir() -> Path:
    return Path(tvm.__file__).parent


def _ffi_dir() -> Path:
    return Path(tvm_ffi.__file__).parent


def _emcc_version(emcc: str) -> str:
    result = subprocess.run([emcc, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0]


def _cache_key(emcc: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"tvm {tvm.__version__}\n{_emcc_version(emcc)}\n{COMPILE_FLAGS}\n".encode())
    for path in sorted(SHIMS_DIR.rglob("*.h")):
        digest.update(str(path.relative_to(SHIMS_DIR)).encode())
        digest.update(path.read_bytes())
    for name in RUNTIME_SOURCES:
        digest.update((_tvm_dir() / "web" / "emcc" / name).read_bytes())
    return digest.hexdigest()[:16]


def _source_tree(root: Path) -> None:
    """A TVM-checkout-shaped tree: copies where sources use `../` paths, links elsewhere."""
    tvm_dir = _tvm_dir()
    shutil.copytree(tvm_dir / "src", root / "src", symlinks=True)
    shutil.copytree(tvm_dir / "web" / "emcc", root / "web" / "emcc")
    (root / "include").symlink_to(tvm_dir / "include")
    (root / "3rdparty").mkdir()
    (root / "3rdparty" / "tvm-ffi").symlink_to(_ffi_dir())
    shutil.copytree(SHIMS_DIR / "src", root / "src", dirs_exist_ok=True)
    shutil.copytree(SHIMS_DIR / "3rdparty" / "compiler-rt", root / "3rdparty" / "compiler-rt")
    shutil.copytree(SHIMS_DIR / "include", root / "shim_include")


def _include_flags(root: Path) -> list[str]:
    ffi = root / "3rdparty" / "tvm-ffi"
    dirs = [
        root / "shim_include",
        root,
        root / "include",
        ffi / "include",
        ffi / "3rdparty" / "dlpack" / "include",
        root / "3rdparty" / "compiler-rt",
    ]
    return [f"-I{d}" for d in dirs]


def runtime_objects(log: Callable[[str], None] | None = None) -> list[Path]:
    """The web runtime's wasm objects for this TVM and emcc, compiled on first use (minutes)."""
    emcc = find_emcc()
    done = cache_dir("web_runtime", _cache_key(emcc))
    objects = [done / Path(name).with_suffix(".o").name for name in RUNTIME_SOURCES]
    if all(o.is_file() for o in objects):
        return objects
    if log is not None:
        log(f"Compiling the TVM web runtime with emcc (once, cached in {done}) ...")
    done.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{done.name}.partial-", dir=done.parent))
    try:
        root = work / "tvm"
        _source_tree(root)

        def compile_one(name: str) -> None:
            cmd = [emcc, *COMPILE_FLAGS, *_include_flags(root), "-c"]
            cmd += ["-o", str(work / Path(name).with_suffix(".o").name)]
            _run([*cmd, str(root / "web" / "emcc" / name)], f"compiling the web runtime ({name})")

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(compile_one, RUNTIME_SOURCES))
        shutil.rmtree(root)
        try:
            work.rename(done)
        except OSError:  # another build finished first: use its objects
            if not all(o.is_file() for o in objects):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return objects


def link_wasm(
    output: Path, model_objects: list[Path], log: Callable[[str], None] | None = None
) -> None:
    """Link the model's wasm objects with the web runtime into a standalone `.wasm`."""
    emcc = find_emcc()
    runtime = runtime_objects(log)
    cmd = [emcc, *LINK_FLAGS, "-o", str(output), *map(str, runtime), *map(str, model_objects)]
    _run(cmd, f"linking {output.name}")


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise RuntimeError(f"emcc failed {what}:\n{output[-6000:]}")
