"""Vulkan for the TVM runtime: our plugin `vulkan_runtime.cc`, compiled once per machine.

The apache-tvm wheel's runtime has no Vulkan device. The first `vulkan_device()` compiles the
plugin with g++ against the wheel's headers and the system's Vulkan loader (about 5 s), caches
it under `~/.cache/mlc/vulkan_runtime/<key>/` (the key hashes the source, the flags, the
compiler and the TVM install it links to) and loads it into the process: that registers
`device_api.vulkan` and the loader of the device code in `vulkan` builds' libraries.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import tvm
import tvm_ffi

from ..host import ToolMissingError, cache_dir

SOURCE = Path(__file__).with_name("vulkan_runtime.cc")
LIBRARY_NAME = "libmlc_vulkan.so"
# The wheel's libraries use the C++11 ABI of libstdc++ (their symbols name std::__cxx11).
FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-D_GLIBCXX_USE_CXX11_ABI=1", "-Wall")
DRIVER_HINT = (
    "install a Vulkan driver: `apt-get install libvulkan1 mesa-vulkan-drivers` (Mesa's "
    "llvmpipe, a software Vulkan device, or your GPU's Mesa driver) or your GPU vendor's driver"
)
HEADERS_HINT = "install the Vulkan headers and loader: `apt-get install libvulkan-dev`"

_plugin: ctypes.CDLL | None = None


def vulkan_device(index: int = 0) -> tvm.runtime.Device:
    """Vulkan device `index`, with the plugin loaded; raises ToolMissingError."""
    load_plugin()
    device = tvm.device("vulkan", index)
    if not device.exist:
        status = tvm_ffi.get_global_func("mlc.vulkan.status")() or "too few devices"
        raise ToolMissingError(f"no Vulkan device {index} ({status}): {DRIVER_HINT}")
    return device


def load_plugin() -> None:
    """Compile (once per machine) and load the plugin; idempotent."""
    global _plugin
    if _plugin is not None:
        return
    if tvm.runtime.enabled("vulkan"):
        raise ToolMissingError(
            "this TVM runtime has its own Vulkan device API, which mlc's plugin would replace; "
            "use the apache-tvm wheel mlc pins (its runtime has none)"
        )
    path = _build()
    try:
        _plugin = ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
    except OSError as err:  # libvulkan.so.1 missing
        raise ToolMissingError(f"cannot load the Vulkan runtime ({err}): {DRIVER_HINT}") from err


def _tvm_dirs() -> dict[str, Path]:
    tvm_dir, ffi_dir = Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent
    return {
        "tvm": tvm_dir,
        "ffi": ffi_dir,
        "include": tvm_dir / "include",
        "src": tvm_dir / "src",  # runtime/workspace_pool.h
        "ffi_include": ffi_dir / "include",
        "dlpack": ffi_dir / "3rdparty" / "dlpack" / "include",
        "tvm_lib": tvm_dir / "lib",
        "ffi_lib": ffi_dir / "lib",
    }


def _command(compiler: str, output: Path) -> list[str]:
    dirs = _tvm_dirs()
    includes = [f"-I{dirs[k]}" for k in ("include", "src", "ffi_include", "dlpack")]
    libs = [f"-L{dirs['tvm_lib']}", f"-L{dirs['ffi_lib']}", "-ltvm_runtime", "-ltvm_ffi"]
    rpath = f"-Wl,-rpath,{dirs['tvm_lib']}:{dirs['ffi_lib']}"
    return [compiler, *FLAGS, *includes, str(SOURCE), "-o", str(output), *libs, "-lvulkan", rpath]


def _cache_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(_command(compiler, Path("out"))).encode())
    digest.update(f"{version}\n{tvm.__version__}".encode())
    return digest.hexdigest()[:16]


def _build() -> Path:
    compiler = shutil.which("g++")
    if compiler is None:
        raise ToolMissingError(
            "the Vulkan runtime plugin is compiled on first use and needs g++: "
            "`apt-get install g++`"
        )
    done = cache_dir("vulkan_runtime", _cache_key(compiler))
    if (done / LIBRARY_NAME).is_file():
        return done / LIBRARY_NAME
    done.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{done.name}.partial-", dir=done.parent))
    try:
        run = subprocess.run(
            _command(compiler, work / LIBRARY_NAME), capture_output=True, text=True
        )
        if run.returncode != 0:
            log = (run.stdout + run.stderr).strip()
            if "vulkan/vulkan.h" in log or "-lvulkan" in log:
                raise ToolMissingError(f"compiling the Vulkan runtime plugin: {HEADERS_HINT}")
            raise RuntimeError(f"g++ failed on {SOURCE}:\n{log[-4000:]}")
        try:
            work.rename(done)
        except OSError:  # another process finished first: use its build
            if not (done / LIBRARY_NAME).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done / LIBRARY_NAME


__all__ = ["ToolMissingError", "load_plugin", "vulkan_device"]
