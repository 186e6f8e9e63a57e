"""What every GPU preset shares: device limits, DLight's GPU schedule rules, the host triple.

A GPU build is a host object (the Relax VM code and kernel launchers, for the device's CPU
triple) plus device code (CUDA, Metal, OpenCL C, WGSL). The kernels are the same fused TIR
as on the CPU, dequantize inside the matmul's reduction, scheduled by our quantized-linear
rule (`gpu_schedules.py`) and DLight's GPU rules under the thread, shared-memory and warp
limits recorded per preset. The paged KV cache brings its own GPU attention kernels, already
scheduled for the target the model is exported under.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tvm
from tvm.s_tir import dlight as dl
from tvm.target import Target

from .base import TargetPreset
from .gpu_schedules import DequantizeMatmul


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """The limits schedules may assume on every device of a preset."""

    max_threads_per_block: int
    max_shared_memory_per_block: int
    thread_warp_size: int


# Metal and Vulkan guarantee 256 threads per workgroup and 32 KB of threadgroup memory on
# every device we target; OpenCL on Adreno/Mali guarantees 256 threads and 16 KB is common.
PORTABLE_LIMITS = DeviceLimits(256, 32 * 1024, 1)


class Declining(dl.ScheduleRule):
    """A DLight rule that declines (returns None, so the next rule is tried) where it would
    fail: DLight's GEMV rule asserts on the gather matmuls of mixture-of-experts models (a
    weight indexed by the token's expert id), which it takes for GEMVs."""

    def __init__(self, rule: dl.ScheduleRule):
        self.rule = rule

    def apply(self, func, target: Target, tunable: bool):
        try:
            return self.rule.apply(func, target, tunable)
        except (AssertionError, ValueError, RuntimeError):  # ScheduleError is a RuntimeError
            return None


class GPUTarget(TargetPreset):
    """A preset compiling kernels for a GPU and host code for `host_triple`."""

    kind: str
    host_triple: str | None = None  # None: this machine (x86_64 Linux)
    limits: DeviceLimits = PORTABLE_LIMITS
    library_suffix = ".tar"

    def device_attrs(self) -> dict[str, Any]:
        """Extra TVM target attributes (arch, feature flags)."""
        return {}

    def tvm_target(self) -> Target:
        host: dict[str, Any] = {"kind": "llvm"}
        if self.host_triple:
            host["mtriple"] = self.host_triple
        return Target(
            {
                "kind": self.kind,
                "max_threads_per_block": self.limits.max_threads_per_block,
                "max_num_threads": self.limits.max_threads_per_block,
                "max_shared_memory_per_block": self.limits.max_shared_memory_per_block,
                "thread_warp_size": self.limits.thread_warp_size,
                **self.device_attrs(),
            },
            host=host,
        )

    def schedule_rules(self) -> list[dl.ScheduleRule]:
        """Our quantized-linear rule, then DLight's GPU rules, most specific first; Fallback
        (one thread per output element) is right for the elementwise and gather kernels."""
        return [
            DequantizeMatmul(),
            *(
                Declining(rule)
                for rule in (
                    dl.gpu.Matmul(),
                    dl.gpu.GEMV(),
                    dl.gpu.LowBatchGEMV(),
                    dl.gpu.Reduction(),
                    dl.gpu.GeneralReduction(),
                    dl.gpu.RMSNorm(),
                )
            ),
            dl.gpu.Fallback(),
        ]

    def schedule_passes(self, target: Target) -> list[tvm.transform.Pass]:
        return [dl.ApplyDefaultSchedule(*self.schedule_rules())]
