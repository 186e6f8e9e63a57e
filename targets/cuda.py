"""NVIDIA GPUs: CUDA kernels compiled ahead of time by `nvcc` and embedded in the `.so`.

TVM generates CUDA C and, left alone, stores that source in the library to be compiled when
it is loaded. We compile it at export instead: `nvcc` builds a fatbin holding a cubin for each
requested architecture plus PTX (so GPUs newer than all of them can still JIT it), and the
fatbin replaces the source in the library's device-module blob. Nothing is compiled at load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir import dlight as dl
from tvm.target import Target

from mlc.runtime.host import ToolMissingError

from . import device_blob
from .gpu import DeviceLimits, GPUTarget

DEFAULT_ARCH = "sm_80"
# Every CUDA GPU since Kepler: 1024 threads per block, 48 KB static shared memory per block
# (more needs an opt-in attribute TVM does not set), 32-thread warps.
CUDA_LIMITS = DeviceLimits(1024, 48 * 1024, 32)


def find_nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise ToolMissingError(
            "the cuda target needs NVIDIA's nvcc on PATH: install the CUDA toolkit "
            "(https://developer.nvidia.com/cuda-downloads) or add its bin/ folder to PATH"
        )
    return nvcc


@functools.cache
def supported_arches(nvcc: str) -> tuple[str, ...]:
    """The `sm_XX` codes this nvcc can compile for."""
    out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True)
    return tuple(line.strip() for line in out.stdout.splitlines() if line.startswith("sm_"))


def arch_number(arch: str) -> int:
    """`sm_90` -> 90, `sm_90a` -> 90."""
    return int("".join(c for c in arch[3:] if c.isdigit()))


def parse_arches(arch: str | None) -> tuple[str, ...]:
    """`"sm_80,sm_90"` or `"80,90"` -> `("sm_80", "sm_90")`, checked against nvcc."""
    names = [a.strip() for a in (arch or DEFAULT_ARCH).split(",") if a.strip()]
    arches = tuple(dict.fromkeys(a if a.startswith("sm_") else f"sm_{a}" for a in names))
    known = supported_arches(find_nvcc())
    unknown = [a for a in arches if a not in known]
    if unknown or not arches:
        raise ValueError(
            f"nvcc cannot compile for {', '.join(unknown) or 'an empty --arch'}; "
            f"this nvcc knows: {', '.join(known)}"
        )
    return arches


def nvcc_fatbin(code: str, arches: tuple[str, ...]) -> bytes:
    """A fatbin with one cubin per arch plus PTX for the oldest arch.

    The kernels are generated for the oldest arch (see `CUDATarget.device_attrs`), so one
    front-end pass to `compute_<oldest>` PTX serves every cubin (about half the time of one
    pass per arch); that PTX is embedded too, so GPUs newer than every cubin JIT it.
    """
    nvcc = find_nvcc()
    oldest = min(arches, key=arch_number)[3:]
    codes = ",".join([*arches, f"compute_{oldest}"])
    flags = ["-gencode", f"arch=compute_{oldest},code=[{codes}]"]
    with tempfile.TemporaryDirectory(prefix="mlc-nvcc-") as tmp:
        source, output = Path(tmp, "kernels.cu"), Path(tmp, "kernels.fatbin")
        source.write_text(code)
        run = subprocess.run(
            [nvcc, "--fatbin", "-O3", *flags, "-o", str(output), str(source)],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise RuntimeError(f"nvcc failed on the generated CUDA kernels:\n{run.stderr}")
        return output.read_bytes()


class WithoutTensorCores(dl.ScheduleRule):
    """DLight's matmul rule shown the target as a GPU without tensor cores (`sm_60`), so that it
    never tries its fp16/int8 tensorization. In apache-tvm 0.27 that path crashes the compiler
    (a segfault in `s_tir::Tensorize`) on fp16 matmuls as small as 256 x 256; and even where a
    function opts out (`dlight.do_not_tensorize`) the rule first imports every tensor intrinsic
    TVM has (about 28 s, once per process). The architecture is the only thing the rule reads
    from it besides the target's kind, which stays `cuda`."""

    def __init__(self, rule: dl.ScheduleRule):
        self.rule = rule

    def apply(self, func, target: Target, tunable: bool):
        return self.rule.apply(func, _without_tensor_cores(str(target)), tunable)


@functools.lru_cache(maxsize=8)
def _without_tensor_cores(target: str) -> Target:
    config = dict(Target(target).export())
    config["arch"] = "sm_60"
    return Target(config)


@dataclasses.dataclass
class CUDATarget(GPUTarget):
    name: str = "cuda"
    description: str = "NVIDIA GPUs (CUDA, device code compiled ahead of time by nvcc)"
    kind: str = "cuda"
    device: str = "cuda"
    library_suffix: str = ".so"
    limits: DeviceLimits = CUDA_LIMITS
    arches: tuple[str, ...] = (DEFAULT_ARCH,)

    def with_options(self, arch: str | None = None) -> CUDATarget:
        return dataclasses.replace(self, arches=parse_arches(arch))

    def device_attrs(self) -> dict[str, str]:
        # Kernels are generated for the oldest requested arch: they run on all of them.
        return {"arch": min(self.arches, key=arch_number)}

    def schedule_rules(self) -> list[dl.ScheduleRule]:
        return [
            WithoutTensorCores(r) if isinstance(getattr(r, "rule", r), dl.gpu.Matmul) else r
            for r in super().schedule_rules()
        ]

    def planned_memory_passes(self, target: Target) -> list[tvm.transform.Pass]:
        # Lifts the kernel launches between allocations into functions the VM captures as
        # CUDA graphs on first run and replays after (one graph per shape).
        return [relax.transform.RewriteCUDAGraph()]

    @contextlib.contextmanager
    def compiling(self, target: Target) -> Iterator[None]:
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
            yield

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        executable.export_library(str(path), fpack_imports=self._pack_imports)

    def _pack_imports(
        self, mod: tvm.runtime.Module, is_system_lib: bool, prefix: str, workspace: str
    ) -> str:
        """The device-module blob as C source, CUDA source swapped for nvcc's fatbin."""
        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy())
        sources = [m.inspect_source() for m in device_blob.modules_of_kind(mod, "cuda")]
        fatbins = {source: nvcc_fatbin(source, self.arches) for source in sources}
        blob = device_blob.replace_device_code(blob, "cuda", "fatbin", fatbins)
        path = Path(workspace, f"{prefix}devc.c")
        path.write_text(device_blob.blob_to_c(blob, is_system_lib))
        return str(path)
