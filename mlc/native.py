"""`mlc native build`: the native runtime (`runtime/native`, C++17 over TVM's runtime libraries)
compiled with CMake into a folder an app or a script can use as is, for this machine or, cross-
compiled, for 64-bit ARM Linux.

The folder holds `bin/mlc-chat` and `bin/mlc-tokenize`, `lib/libmlc_runtime.so` (the C API of
`include/mlc_runtime.h`) and the TVM runtime libraries it links (`libtvm_runtime.so`,
`libtvm_ffi.so`), found through `$ORIGIN` run paths: the folder can be moved whole. For this
machine those libraries come from the installed apache-tvm wheel; for `arm64` from the same
version's `manylinux_2_28_aarch64` wheels on PyPI, downloaded once (`pip download`) into
`~/.cache/mlc/wheels/`. CMake builds are cached under `~/.cache/mlc/native/<key>/`, keyed by the
sources, the compiler and the TVM libraries.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import tvm
import tvm_ffi

import mlc
from mlc.runtime.host import ToolMissingError, cache_dir

SOURCE_DIR = Path(__file__).resolve().parent.parent / "runtime" / "native"
if not SOURCE_DIR.is_dir():  # installed: mlc.runtime is the `runtime` folder
    SOURCE_DIR = Path(__file__).resolve().parent / "runtime" / "native"
ARCHES = ("x86_64", "arm64")
CROSS_COMPILERS = {"arm64": "aarch64-linux-gnu-g++"}
WHEEL_PLATFORMS = {"arm64": "manylinux_2_28_aarch64"}
# The Debian packages that run the cross-compiled programs here.
QEMU = "qemu-aarch64"
ARM64_SYSROOT = Path("/usr/aarch64-linux-gnu")

Log = Callable[[str], None]


class NativeBuildError(RuntimeError):
    """CMake or the compiler failed; the message holds the end of their output."""


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"mlc native build needs {name}: {hint}")
    return path


def _run(command: list[str], what: str) -> None:
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        log = (run.stdout + run.stderr).strip()
        raise NativeBuildError(f"{what} failed ({' '.join(command[:3])} ...):\n{log[-4000:]}")


def _wheel(distribution: str, arch: str, log: Log | None) -> Path:
    """This machine's version of `distribution` as a wheel for `arch`, downloaded once."""
    version = importlib.metadata.version(distribution)
    folder = cache_dir("wheels")
    stem = distribution.replace("-", "_") + f"-{version}-"
    tag = WHEEL_PLATFORMS[arch].rsplit("_", 1)[-1]  # aarch64
    found = sorted(p for p in folder.glob(f"{stem}*.whl") if tag in p.name)
    if found:
        return found[0]
    if log is not None:
        log(f"Downloading {distribution}=={version} for {arch} from PyPI into {folder} (once) ...")
    folder.mkdir(parents=True, exist_ok=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"{distribution}=={version}",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            WHEEL_PLATFORMS[arch],
            "--python-version",
            python,
            "-d",
            str(folder),
            "-q",
        ],
        f"downloading the {arch} wheel of {distribution} (it needs PyPI once)",
    )
    found = sorted(p for p in folder.glob(f"{stem}*.whl") if tag in p.name)
    if not found:
        raise NativeBuildError(f"pip downloaded no {arch} wheel of {distribution} into {folder}")
    return found[0]


def tvm_roots(arch: str, log: Log | None = None) -> tuple[Path, Path]:
    """(tvm_ffi folder, tvm folder) with `include/` and `lib/` for `arch`."""
    if arch == host_arch():
        return Path(tvm_ffi.__file__).parent, Path(tvm.__file__).parent
    wheels = [_wheel("apache-tvm-ffi", arch, log), _wheel("apache-tvm", arch, log)]
    key = hashlib.sha256("\n".join(w.name for w in wheels).encode()).hexdigest()[:16]
    root = cache_dir("native", f"tvm-{arch}-{key}")
    if not (root / "done").is_file():
        root.mkdir(parents=True, exist_ok=True)
        wanted = ("tvm_ffi/include/", "tvm_ffi/lib/libtvm_ffi.so", "tvm/lib/libtvm_runtime.so")
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.startswith(wanted):
                        archive.extract(name, root)
        (root / "tvm" / "include").mkdir(exist_ok=True)
        (root / "done").write_text("")
    return root / "tvm_ffi", root / "tvm"


def _cache_key(compiler: str, roots: tuple[Path, Path]) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(f"{version}\n{tvm.__version__}\n{roots}".encode())
    sources = sorted(
        p for p in SOURCE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in sources:
        digest.update(str(path.relative_to(SOURCE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def native_build(out_dir: Path, arch: str | None = None, log: Log | None = None) -> Path:
    """Compile the native runtime for `arch` (this machine's by default; once per source
    version) and install it into `out_dir`."""
    arch = arch or host_arch()
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHES)}")
    cmake = _tool("cmake", "`apt-get install cmake` (or `pip install cmake`)")
    if arch == host_arch():
        compiler = _tool("g++", "`apt-get install g++`")
        cross: list[str] = []
    else:
        name = CROSS_COMPILERS.get(arch)
        if name is None or host_arch() != "x86_64":
            raise ValueError(f"cross-compiling for {arch} runs on x86_64 Linux hosts")
        compiler = _tool(name, "`apt-get install g++-aarch64-linux-gnu`")
        cross = ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64"]
    roots = tvm_roots(arch, log)
    build_dir = cache_dir("native", f"{arch}-{_cache_key(compiler, roots)}")
    if not (build_dir / "done").is_file():
        if log is not None:
            log(f"Compiling the native runtime for {arch} with CMake (cached in {build_dir}) ...")
        build_dir.mkdir(parents=True, exist_ok=True)
        _run(
            [
                cmake,
                "-S",
                str(SOURCE_DIR),
                "-B",
                str(build_dir),
                f"-DCMAKE_CXX_COMPILER={compiler}",
                *cross,
                f"-DTVM_FFI_ROOT={roots[0]}",
                f"-DTVM_ROOT={roots[1]}",
                f"-DMLC_VERSION={mlc.__version__}",
            ],
            "configuring the native runtime",
        )
        jobs = str(len(os.sched_getaffinity(0)))
        _run([cmake, "--build", str(build_dir), "-j", jobs], "compiling the native runtime")
        (build_dir / "done").write_text("")
    out_dir = Path(out_dir)
    _run(
        [cmake, "--install", str(build_dir), "--prefix", str(out_dir)],
        "installing the native runtime",
    )
    if log is not None:
        log(f"Native runtime for {arch} in {out_dir}: {out_dir / 'bin' / 'mlc-chat'}")
    return out_dir


def emulator_prefix(arch: str) -> list[str]:
    """The command that runs an `arch` program here: nothing for this machine's own, else
    `qemu-aarch64 -L /usr/aarch64-linux-gnu` (Debian's qemu-user and the cross libraries)."""
    if arch == host_arch():
        return []
    qemu = _tool(QEMU, "`apt-get install qemu-user` runs arm64 programs on x86_64")
    if not ARM64_SYSROOT.is_dir():
        raise ToolMissingError(
            f"running arm64 programs needs the aarch64 C/C++ libraries in {ARM64_SYSROOT}: "
            "`apt-get install g++-aarch64-linux-gnu`"
        )
    return [qemu, "-L", str(ARM64_SYSROOT)]
