"""Vulkan: TVM's OpenCL C kernels compiled to SPIR-V by clspv, host code for this machine.

This TVM wheel has no SPIR-V code generator (`target.build.vulkan` is missing), so kernels are
generated as OpenCL C and each is compiled by clspv and validated by `spirv-val`. The `.tar`
holds the host objects (as for `android`), `vulkan/<kernel>.spv` and `vulkan/manifest.json`
describing each kernel: its descriptor bindings, push constants, workgroup-size
specialization constants and the host-side launch (argument and extent expressions from the
TIR after the host/device split). TVM's runtime cannot launch these kernels (it is built
without Vulkan): `mlc.targets.vulkan_check.VulkanDevice` dispatches them from Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import tvm
from tvm import tirx
from tvm.target import Target

from .gpu import GPUTarget
from .kernel_check import kernel_sources, launches
from .spirv import _tool, clspv_compile, compile_kernel

MANIFEST = "vulkan/manifest.json"


def launch_manifest(split: tvm.IRModule) -> dict[str, dict]:
    """Per kernel: the host function launching it, its operands and launch extents as TIR."""
    out: dict[str, dict] = {}
    for gvar, func in split.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        for call in launches(func):
            kernel = call.args[0].value
            params = split[kernel].params
            n = len(params)
            out[kernel] = {
                "host_function": gvar.name_hint,
                "params": [str(p.name) for p in params],
                "operands": [str(a) for a in call.args[1 : 1 + n]],
                "launch_params": list(call.attrs.launch_params),
                "launch_extents": [str(a) for a in call.args[1 + n :]],
            }
    return out


@dataclasses.dataclass
class VulkanTarget(GPUTarget):
    name: str = "vulkan"
    description: str = "Vulkan GPUs (SPIR-V from OpenCL C by clspv; .tar with a kernel manifest)"
    kind: str = "opencl"
    device: str = "vulkan"
    host_triple: str | None = None
    library_suffix: str = ".tar"
    _split: list[tvm.IRModule] = dataclasses.field(default_factory=list, repr=False)

    @contextlib.contextmanager
    def compiling(self, target: Target) -> Iterator[None]:
        _tool("spirv-val")  # fail before the long compile when a tool is missing
        clspv_compile("__kernel void probe(__global int* x) { x[0] = 1; }")
        split = self._split
        split.clear()

        @tvm.instrument.pass_instrument
        class CaptureSplit:
            def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
                if info.name == "tirx.SplitHostDevice":
                    split.append(mod)

        outer = tvm.transform.PassContext.current()
        with tvm.transform.PassContext(
            opt_level=outer.opt_level,
            config=dict(outer.config),
            instruments=[*outer.instruments, CaptureSplit()],
        ):
            yield

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        source = _device_source(executable.mod)
        launches_by_kernel: dict[str, dict] = {}
        for mod in self._split:
            launches_by_kernel.update(launch_manifest(mod))
        files: dict[str, bytes] = {}
        manifest = []
        for name, kernel_source in kernel_sources(source).items():
            spirv, iface = compile_kernel(kernel_source, name)
            files[f"vulkan/{name}.spv"] = spirv
            files[f"vulkan/{name}.cl"] = kernel_source.encode()
            manifest.append({**iface.to_json(), "launch": launches_by_kernel.get(name)})
        files[MANIFEST] = json.dumps({"kernels": manifest}, indent=1).encode()
        host = path.with_name(f".host-{path.name}")  # keeps the .tar suffix export needs
        partial = path.with_name(f".partial-{path.name}")
        try:
            executable.export_library(str(host))  # gzip tar of the host and device objects
            with tarfile.open(host, "r:*") as src, tarfile.open(partial, "w:gz") as tar:
                for member in src.getmembers():
                    tar.addfile(member, src.extractfile(member) if member.isfile() else None)
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            os.replace(partial, path)
        finally:
            host.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)


def _device_source(mod: tvm.runtime.Module) -> str:
    """The OpenCL C of every kernel, from the device module imported by the host module."""
    stack, sources = [mod], []
    while stack:
        m = stack.pop()
        if m.kind == "opencl":
            sources.append(m.inspect_source())
        stack.extend(m.imports)
    if not sources:
        raise RuntimeError("the build produced no OpenCL C device module to convert to SPIR-V")
    return "\n".join(sources)


def read_manifest(library: Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest, SPIR-V by kernel name) from a `vulkan` build's `.tar`."""
    with tarfile.open(library) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        spirv = {
            k["name"]: tar.extractfile(f"vulkan/{k['name']}.spv").read()
            for k in manifest["kernels"]
        }
    return manifest, spirv
