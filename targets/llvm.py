"""The host CPU through LLVM: the target every user has."""

from __future__ import annotations

import os

import tvm
from tvm.s_tir.dlight import ApplyDefaultSchedule
from tvm.target import Target, codegen

from .base import TargetPreset
from .cpu_attention import use_cpu_attention
from .cpu_attention_common import LANES
from .cpu_schedules import Elementwise, MatmulNT, RowReduction
from .x86_kernels import has_avx2, use_x86_kernels

# Fast-math without `arcp` (and `afn`): LLVM may reassociate and vectorise float sums, but
# never turns a division or square root into a reciprocal estimate, whose bits differ between
# CPU vendors and between the vector loop and its scalar rest.
FAST_MATH_FLAGS = ("nnan", "ninf", "nsz", "contract", "reassoc")


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (`znver3`, `skylake-avx512`, ...)."""
    return str(codegen.llvm_get_system_cpu())


class LLVMTarget(TargetPreset):
    name = "llvm"
    description = "the host CPU (LLVM, tuned for the detected -mcpu)"

    def tvm_target(self) -> Target:
        # Reassociation lets LLVM vectorise the float reductions (about 5x on decode) at a cost
        # of reassociated sums, well inside the fp32 parity tolerance.
        return Target(
            {
                "kind": "llvm",
                "mcpu": host_cpu(),
                "num-cores": os.cpu_count() or 1,
                **{f"fast-math-{flag}": True for flag in FAST_MATH_FLAGS},
            }
        )

    def computes_attention_variant(self, head_dim: int) -> bool:
        return head_dim % LANES == 0  # our CPU kernels; the cache's scalar ones otherwise

    def has_int8_kernels(self, target: Target) -> bool:
        """Whether `use_x86_kernels` replaces the portable int8-activation kernels: on x86
        with AVX2 (an x86 CPU without it keeps the portable ones)."""
        return has_avx2(target)

    def schedule_passes(self, target: Target) -> list[tvm.transform.Pass]:
        kernels = [use_x86_kernels(target)] if self.has_int8_kernels(target) else []
        return [
            *kernels,
            use_cpu_attention,
            ApplyDefaultSchedule(MatmulNT(), Elementwise(), RowReduction()),
        ]
