"""Run TVM's OpenCL C kernels through pyopencl (pocl on this CPU) for the kernel checker."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlc.targets import ToolMissingError

INSTALL_HINT = (
    "install the OpenCL CPU runtime and its Python bindings: "
    "`apt-get install pocl-opencl-icd ocl-icd-libopencl1` and `pip install pyopencl`"
)


def _opencl() -> Any:
    try:
        import pyopencl
    except ImportError as err:
        raise ToolMissingError(f"checking OpenCL kernels needs pyopencl: {INSTALL_HINT}") from err
    return pyopencl


def find_device(platform_hint: str = "Portable Computing Language") -> Any:
    """An OpenCL device, preferring pocl's CPU device."""
    cl = _opencl()
    try:
        platforms = cl.get_platforms()
    except cl.Error as err:  # no ICD installed: clGetPlatformIDs fails
        raise ToolMissingError(f"no OpenCL platform found ({err}): {INSTALL_HINT}") from err
    platforms = sorted(platforms, key=lambda p: platform_hint not in p.name)
    for platform in platforms:
        devices = platform.get_devices()
        if devices:
            return devices[0]
    raise ToolMissingError(f"no OpenCL device found: {INSTALL_HINT}")


class OpenCLDevice:
    """A `kernel_check.Device` running one OpenCL C program's kernels."""

    def __init__(self, source: str, device: Any = None):
        cl = self.cl = _opencl()
        self.context = cl.Context([device or find_device()])
        self.queue = cl.CommandQueue(self.context)
        device = self.context.devices[0]
        if "half" in source and "cl_khr_fp16" not in device.extensions:
            raise ToolMissingError(
                f"the OpenCL device {device.name!r} ({device.platform.version}) lacks "
                "cl_khr_fp16, which float16 kernels need: use a pocl built with half support "
                "(Debian bookworm's pocl 3.1 has none) or check float32 builds here"
            )
        try:
            self.program = cl.Program(self.context, source).build()
        except cl.RuntimeError as err:
            raise RuntimeError(f"the OpenCL C kernels do not compile:\n{err}") from err
        self._kernels: dict[str, Any] = {}

    def upload(self, array: np.ndarray) -> Any:
        flags = self.cl.mem_flags.READ_WRITE | self.cl.mem_flags.COPY_HOST_PTR
        return self.cl.Buffer(self.context, flags, hostbuf=np.ascontiguousarray(array))

    def alloc(self, nbytes: int) -> Any:
        return self.cl.Buffer(self.context, self.cl.mem_flags.READ_WRITE, size=max(nbytes, 4))

    def download(self, buffer: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        out = np.empty(shape, dtype)
        self.cl.enqueue_copy(self.queue, out, buffer)
        return out

    def launch(
        self, kernel: str, args: list[Any], grid: tuple[int, ...], block: tuple[int, ...]
    ) -> None:
        if kernel not in self._kernels:
            self._kernels[kernel] = getattr(self.program, kernel)
        k = self._kernels[kernel]
        k.set_args(*args)
        global_size = tuple(g * b for g, b in zip(grid, block, strict=True))
        self.cl.enqueue_nd_range_kernel(self.queue, k, global_size, block)
        self.queue.finish()
