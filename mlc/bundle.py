"""`mlc bundle`: the Python runtime as a folder that runs builds where apache-tvm is not installed.

The folder holds `mlc` (its runtime only), TVM's Python package without the compiler library
(TVM then loads `libtvm_runtime*.so` alone) and `tvm_ffi`. Put it on `PYTHONPATH` of a Python
that has numpy, tokenizers and jinja2. `tvm_ffi` has a compiled extension: a bundle for another
Python version takes it from that version's `apache-tvm-ffi` wheel (`tvm_ffi_wheel`).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import shutil
import zipfile
from pathlib import Path

import mlc

# Never in a bundle: the compiler library, C++ sources and headers, build files, caches.
_TVM_LEFT_OUT = ("libtvm_compiler.so", "3rdparty", "src", "include", "__pycache__", "*.pyc")
_TVM_FFI_LEFT_OUT = ("include", "src", "3rdparty", "CMakeLists.txt", "share", "__pycache__")
_TVM_FFI_LEFT_OUT += ("*.pyc", "*.pyx", "*.pxd", "*.pxi")
REQUIREMENTS = ("numpy", "tokenizers", "jinja2")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {name!r} is not installed here")
    return Path(next(iter(spec.submodule_search_locations)))


def write_bundle(out_dir: Path, tvm_ffi_wheel: Path | None = None) -> Path:
    """Write the bundle into `out_dir` (new or empty); returns it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; bundle into a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    mlc_dir = Path(mlc.__file__).parent
    (out_dir / "mlc").mkdir()
    shutil.copy2(mlc_dir / "__init__.py", out_dir / "mlc" / "__init__.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.cc", "native")
    shutil.copytree(_package_dir("mlc.runtime"), out_dir / "mlc" / "runtime", ignore=ignore)
    shutil.copytree(
        _package_dir("tvm"), out_dir / "tvm", ignore=shutil.ignore_patterns(*_TVM_LEFT_OUT)
    )
    if tvm_ffi_wheel is None:
        ignore = shutil.ignore_patterns(*_TVM_FFI_LEFT_OUT)
        shutil.copytree(_package_dir("tvm_ffi"), out_dir / "tvm_ffi", ignore=ignore)
    else:
        _extract_package(Path(tvm_ffi_wheel), "tvm_ffi", out_dir, _TVM_FFI_LEFT_OUT)
    (out_dir / "README.txt").write_text(
        "The mlc runtime without the TVM compiler. Run a build with:\n"
        f'  PYTHONPATH={out_dir} python -c "from mlc import ChatModule; ..."\n'
        f"It needs these Python packages: {', '.join(REQUIREMENTS)}.\n"
    )
    return out_dir


def _extract_package(wheel: Path, package: str, out_dir: Path, left_out: tuple[str, ...]) -> None:
    """`package/` from a wheel, less the paths with a part matching a `left_out` pattern."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.startswith(f"{package}/")]
        if not names:
            raise ValueError(f"{wheel} holds no {package}/ package")
        for name in names:
            parts = name.split("/")
            if any(fnmatch.fnmatch(p, pat) for p in parts for pat in left_out):
                continue
            archive.extract(name, out_dir)


def bundle_size(out_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(out_dir).rglob("*") if p.is_file())
