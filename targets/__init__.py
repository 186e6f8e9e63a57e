"""Target presets by name: everything that differs per target lives here."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from tvm.target import Target, codegen

from mlc.runtime.host import ToolMissingError

from .arm64 import Arm64Target
from .base import TargetPreset
from .cuda import CUDATarget
from .llvm import LLVMTarget
from .metal import IPhoneTarget, MetalTarget
from .opencl import AndroidTarget, OpenCLTarget
from .vulkan import VulkanTarget
from .webgpu import WebGPUTarget

TARGETS: dict[str, TargetPreset] = {
    t.name: t
    for t in (
        LLVMTarget(),
        Arm64Target(),
        CUDATarget(),
        MetalTarget(),
        IPhoneTarget(),
        AndroidTarget(),
        OpenCLTarget(),
        WebGPUTarget(),
        VulkanTarget(),
    )
}


def local_target() -> str:
    """The preset for this machine's own device: an NVIDIA GPU, a Mac's GPU, else the CPU."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir():
        return "cuda"
    return "llvm"


def get_target(name: str) -> TargetPreset:
    """The preset called `name`; `auto` is the local device."""
    if name == "auto":
        name = local_target()
    if name not in TARGETS:
        raise ValueError(
            f"unknown target {name!r}; choose one of: auto, {', '.join(TARGETS)} "
            "(`mlc build --target help` describes them)"
        )
    return TARGETS[name]


def describe_targets() -> str:
    """One line per preset, for `mlc build --target help`."""
    lines = [f"  {'auto':<8} the local device (now: {local_target()})"]
    lines += [f"  {t.name:<8} {t.description}" for t in TARGETS.values()]
    return "\n".join(lines)


def target_summary(target: Target) -> str:
    """`mcpu=znver3` or `cuda arch=sm_80, host arm64-apple-ios`: what a build compiles for."""
    if target.kind.name == "llvm":
        return f"mcpu={target.attrs.get('mcpu', 'generic')}"
    parts = [target.kind.name]
    if "arch" in target.attrs:
        parts.append(f"arch={target.attrs['arch']}")
    host = target.host.attrs.get("mtriple", "") if target.host is not None else ""
    if host == codegen.llvm_get_system_triple():
        host = ""
    return " ".join(parts) + f", host {host or 'this machine'}"


__all__ = [
    "TARGETS",
    "TargetPreset",
    "ToolMissingError",
    "describe_targets",
    "get_target",
    "local_target",
    "target_summary",
]
