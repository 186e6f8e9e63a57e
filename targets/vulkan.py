"""Vulkan: TVM's OpenCL C kernels compiled to SPIR-V by clspv, in a `.so` for this host.

This TVM wheel has no SPIR-V code generator (`target.build.vulkan` is missing), so kernels are
generated as OpenCL C and each is compiled by clspv and validated by `spirv-val`. The library's
device blob then holds, instead of TVM's OpenCL module, a module of kind `mlc_vulkan`:
`<manifest: str> <spirv: bytes>...`, one SPIR-V module per manifest entry, in order. The JSON
manifest describes each kernel: its argument types and launch tags (TVM's function table),
its descriptor bindings, push constants and workgroup-size specialization ids (clspv's
reflection). Our runtime plugin (`mlc/runtime/vulkan/`) registers the loader for that kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import tvm
import tvm_ffi
from tvm.target import Target

from . import device_blob
from .gpu import GPUTarget
from .spirv import KernelInterface, _tool, clspv_compile, compile_kernel

MODULE_KIND = "mlc_vulkan"  # its loader: `ffi.Module.load_from_bytes.mlc_vulkan`
MANIFEST_FORMAT = 1  # the plugin's `kManifestFormat`: bump both when the layout changes
LAUNCH_TAGS = {f"{scope}.{axis}" for scope in ("blockIdx", "threadIdx") for axis in "xyz"}
VULKAN_DEVICE_TYPE = 7  # kDLVulkan
_U64 = struct.Struct("<Q")


def kernel_entry(info: device_blob.FunctionInfo, iface: KernelInterface) -> dict:
    """The manifest entry of one kernel; raises if TVM's and clspv's views of it disagree."""
    for ordinal in iface.buffers:
        if info.arg_types[ordinal] != "handle":
            raise ValueError(f"kernel {info.name}: clspv binds scalar argument {ordinal}")
    for ordinal, (_, size) in iface.push_constants.items():
        dtype = tvm.DataType(info.arg_types[ordinal])
        if dtype.type_code == tvm.DataTypeCode.HANDLE or size != dtype.bits // 8:
            raise ValueError(f"kernel {info.name}: argument {ordinal} is {dtype}, not {size} B")
    unknown = set(info.launch_param_tags) - LAUNCH_TAGS
    if unknown:
        raise NotImplementedError(f"kernel {info.name}: launch parameters {sorted(unknown)}")
    return {**iface.to_json(), "arg_types": info.arg_types, "launch_params": info.launch_param_tags}


def spirv_module(opencl_module: bytes) -> tuple[str, bytes]:
    """TVM's OpenCL device module -> (our kind, manifest + SPIR-V of every kernel)."""
    _, table, source = device_blob.read_device_module(opencl_module)
    sources = device_blob.kernel_sources(source.decode())
    if set(sources) != set(table):
        raise ValueError(
            f"OpenCL source and function table disagree on {sorted(set(sources) ^ set(table))}"
        )
    kernels, code = [], b""
    for name, info in sorted(table.items()):
        spirv, iface = compile_kernel(sources[name], name)
        kernels.append(kernel_entry(info, iface))
        code += _U64.pack(len(spirv)) + spirv
    manifest = json.dumps({"format": MANIFEST_FORMAT, "kernels": kernels}).encode()
    return MODULE_KIND, _U64.pack(len(manifest)) + manifest + code


@dataclasses.dataclass
class VulkanTarget(GPUTarget):
    name: str = "vulkan"
    description: str = "Vulkan GPUs (SPIR-V from OpenCL C by clspv; .so for this host)"
    kind: str = "opencl"
    device: str = "vulkan"
    host_triple: str | None = None
    library_suffix: str = ".so"

    def device_attrs(self) -> dict[str, int]:
        # OpenCL C kernels, but host code that checks its tensors are on, sets and allocates
        # workspace on a Vulkan device (the OpenCL device type otherwise).
        return {"target_device_type": VULKAN_DEVICE_TYPE}

    @contextlib.contextmanager
    def compiling(self, target: Target) -> Iterator[None]:
        _tool("spirv-val")  # fail before the long compile when a tool is missing
        clspv_compile("__kernel void probe(__global int* x) { x[0] = 1; }")
        yield

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        executable.export_library(str(path), fpack_imports=self._pack_imports)

    def _pack_imports(
        self, mod: tvm.runtime.Module, is_system_lib: bool, prefix: str, workspace: str
    ) -> str:
        """The device-module blob as C source, the OpenCL module swapped for SPIR-V."""
        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy())
        blob, replaced = device_blob.rewrite_modules(blob, "opencl", spirv_module)
        if replaced != 1:
            raise ValueError(f"expected one OpenCL device module in the library, got {replaced}")
        path = Path(workspace, f"{prefix}devc.c")
        path.write_text(device_blob.blob_to_c(blob, is_system_lib))
        return str(path)


def read_manifest(library: Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest, SPIR-V by kernel name) from a `vulkan` build's `.so`."""
    found: list[bytes] = []

    def keep(module: bytes) -> tuple[str, bytes]:
        found.append(module)
        return MODULE_KIND, module

    device_blob.rewrite_modules(device_blob.read_library_blob(library), MODULE_KIND, keep)
    if len(found) != 1:
        raise ValueError(f"{library} holds {len(found)} {MODULE_KIND} modules, expected one")
    data, pos = found[0], 0

    def chunk() -> bytes:
        nonlocal pos
        (size,) = _U64.unpack_from(data, pos)
        pos += _U64.size + size
        return data[pos - size : pos]

    manifest = json.loads(chunk())
    spirv = {k["name"]: chunk() for k in manifest["kernels"]}
    return manifest, spirv
