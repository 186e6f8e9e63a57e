"""Run TVM's WGSL kernels through PyPI `wgpu` (Mesa's software Vulkan device here) for the
kernel checker (`kernel_check`).

Each kernel is dispatched the way TVM's JavaScript runtime (`tvm/web/src/webgpu.ts`) does it:
buffer arguments at bindings 0..n-1 of group 0, then one uniform buffer holding the scalar
arguments (4 bytes each, in order) followed by `packGridDimX`, the real grid width; a grid
wider than 65535 workgroups is folded into the z dimension, which the kernel unfolds.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from mlc.targets import ToolMissingError
from mlc.targets.device_blob import kernel_sources

INSTALL_HINT = (
    "install the WebGPU bindings and a Vulkan driver: `pip install wgpu` and "
    "`apt-get install mesa-vulkan-drivers` (llvmpipe, a CPU Vulkan device)"
)
MAX_GRID_DIM = 1 << 16
_BINDING = re.compile(
    r"@group\(0\) @binding\((\d+)\) var<(storage, read_write|storage, read|uniform)>"
)


def _wgpu() -> Any:
    _start_clspv()
    try:
        import wgpu
    except ImportError as err:
        raise ToolMissingError(f"checking WGSL kernels needs wgpu: {INSTALL_HINT}") from err
    return wgpu


def _start_clspv() -> None:
    """Compile one kernel with clspv, if it is installed, before wgpu-native loads: clspv's first
    compile in a process that has loaded wgpu-native crashes (a segmentation fault), and one
    compile before makes every later one safe, so a test process can build `vulkan` libraries
    after checking WGSL kernels."""
    from mlc.targets import spirv

    try:
        spirv.clspv_compile("__kernel void probe(__global int* x) { x[0] = 1; }")
    except ToolMissingError:
        pass


def fold_grid(grid: tuple[int, ...]) -> tuple[int, int, int]:
    """The dispatch size for `grid`: x halved (rounding up) into z until it fits."""
    x, y, z = [*grid, 1, 1, 1][:3]
    if z != 1:
        raise ValueError("WebGPU kernels reserve blockIdx.z for folding wide grids")
    while x >= MAX_GRID_DIM:
        x, z = (x + 1) // 2, z * 2
    return x, y, z


def pack_scalars(values: list[np.generic], grid_x: int) -> bytes:
    """The uniform block: each scalar as a 4-byte int/uint/float, then `packGridDimX`."""
    words = []
    for value in values:
        kind = np.dtype(value.dtype).kind
        dtype = {"i": np.int32, "u": np.uint32, "f": np.float32, "b": np.int32}[kind]
        words.append(np.array(value, dtype).tobytes())
    words.append(np.uint32(grid_x).tobytes())
    return b"".join(words)


class WGSLDevice:
    """A `kernel_check.Device` dispatching one TVM WGSL source's kernels by name."""

    def __init__(self, source: str):
        wgpu = self.wgpu = _wgpu()
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None:
            raise ToolMissingError(f"no WebGPU adapter found: {INSTALL_HINT}")
        self.name = adapter.info.get("device", "") or adapter.info.get("description", "")
        features = ["shader-f16"] if "shader-f16" in adapter.features else []
        if "f16" in source and not features:
            raise ToolMissingError(f"{self.name} lacks shader-f16, which float16 kernels need")
        limits = adapter.limits
        wanted = (
            "max-storage-buffer-binding-size",
            "max-buffer-size",
            "max-compute-workgroup-storage-size",
            "max-compute-invocations-per-workgroup",
            "max-storage-buffers-per-shader-stage",
        )
        self.device = adapter.request_device_sync(
            required_features=features, required_limits={k: limits[k] for k in wanted}
        )
        self.sources = kernel_sources(source)
        self.header = "enable f16;\n" if features and "f16" in source else ""
        self._pipelines: dict[str, tuple[Any, Any, int]] = {}

    # -- buffers ------------------------------------------------------------------------------

    def _usage(self) -> int:
        u = self.wgpu.BufferUsage
        return u.STORAGE | u.COPY_SRC | u.COPY_DST

    def alloc(self, nbytes: int) -> Any:
        return self.device.create_buffer(size=max(16, -(-nbytes // 16) * 16), usage=self._usage())

    def upload(self, array: np.ndarray) -> Any:
        data = np.ascontiguousarray(array).tobytes()
        buffer = self.alloc(len(data))
        if data:
            padded = data + b"\0" * (-len(data) % 4)
            self.device.queue.write_buffer(buffer, 0, padded)
        return buffer

    def download(self, buffer: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        data = self.device.queue.read_buffer(buffer)
        return np.frombuffer(bytes(data[:nbytes]), dtype).reshape(shape).copy()

    # -- kernels ------------------------------------------------------------------------------

    def _pipeline(self, kernel: str) -> tuple[Any, Any, int]:
        if kernel in self._pipelines:
            return self._pipelines[kernel]
        wgpu = self.wgpu
        code = self.sources[kernel]
        if self.header and "enable f16" not in code:
            code = self.header + code
        entries, uniform = [], -1
        for binding, access in _BINDING.findall(code):
            if access == "uniform":
                kind, uniform = "uniform", int(binding)
            else:
                kind = "storage" if access.endswith("read_write") else "read-only-storage"
            entries.append(
                {
                    "binding": int(binding),
                    "visibility": wgpu.ShaderStage.COMPUTE,
                    "buffer": {"type": kind},
                }
            )
        layout = self.device.create_bind_group_layout(entries=entries)
        module = self.device.create_shader_module(code=code)
        pipeline = self.device.create_compute_pipeline(
            layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
            compute={"module": module, "entry_point": kernel},
        )
        self._pipelines[kernel] = (pipeline, layout, uniform)
        return self._pipelines[kernel]

    def launch(
        self, kernel: str, args: list[Any], grid: tuple[int, ...], block: tuple[int, ...]
    ) -> None:
        pipeline, layout, uniform = self._pipeline(kernel)
        buffers = [a for a in args if not isinstance(a, np.generic)]
        scalars = [a for a in args if isinstance(a, np.generic)]
        if uniform != len(buffers):
            raise ValueError(f"{kernel}: {len(buffers)} buffer arguments, WGSL binds {uniform}")
        pod = pack_scalars(scalars, grid[0])
        pod_buffer = self.device.create_buffer_with_data(
            data=pod + b"\0" * (-len(pod) % 16), usage=self.wgpu.BufferUsage.UNIFORM
        )
        entries = [
            {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
            for i, b in enumerate(buffers)
        ]
        entries.append(
            {"binding": uniform, "resource": {"buffer": pod_buffer, "offset": 0, "size": len(pod)}}
        )
        bind_group = self.device.create_bind_group(layout=layout, entries=entries)
        encoder = self.device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, bind_group)
        compute.dispatch_workgroups(*fold_grid(grid))
        compute.end()
        self.device.queue.submit([encoder.finish()])
