"""OpenCL GPUs (Adreno, Mali): OpenCL C kernels, host code for Android's aarch64 triple."""

from __future__ import annotations

import dataclasses

from .gpu import DeviceLimits, GPUTarget

# 16 KB of local memory is what Adreno and Mali GPUs commonly guarantee.
MOBILE_LIMITS = DeviceLimits(256, 16 * 1024, 1)


@dataclasses.dataclass
class AndroidTarget(GPUTarget):
    name: str = "android"
    description: str = "Android phones (OpenCL C kernels, aarch64-linux-android host; .tar)"
    kind: str = "opencl"
    device: str = "opencl"
    host_triple: str | None = "aarch64-linux-android"
    limits: DeviceLimits = MOBILE_LIMITS


@dataclasses.dataclass
class OpenCLTarget(AndroidTarget):
    name: str = "opencl"
    description: str = "OpenCL devices on this host's CPU architecture (.so; pocl runs it)"
    host_triple: str | None = None
    library_suffix: str = ".so"
