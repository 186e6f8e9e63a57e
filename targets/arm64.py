"""64-bit ARM Linux and Android CPUs (AArch64 with NEON and the dot-product extension), compiled
here with LLVM and linked with the GNU cross compiler (Debian's `g++-aarch64-linux-gnu`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import tvm
from tvm.s_tir.dlight import ApplyDefaultSchedule
from tvm.support import cc
from tvm.target import Target

from mlc.runtime.host import ToolMissingError

from .base import TargetPreset
from .cpu_attention import use_cpu_attention
from .cpu_schedules import Elementwise, MatmulNT, RowReduction
from .llvm import FAST_MATH_FLAGS
from .x86_kernels import use_x86_kernels

TRIPLE = "aarch64-linux-gnu"
CROSS_COMPILER = f"{TRIPLE}-g++"
CROSS_HINT = (
    f"--target arm64 links with {CROSS_COMPILER}: `apt-get install g++-aarch64-linux-gnu` "
    "(Debian's crossbuild-essential-arm64 has it)"
)


def cross_compiler() -> str:
    path = shutil.which(CROSS_COMPILER)
    if path is None:
        raise ToolMissingError(CROSS_HINT)
    return path


class Arm64Target(TargetPreset):
    name = "arm64"
    description = "64-bit ARM Linux/Android CPUs (NEON + dotprod; .so for aarch64-linux-gnu)"

    def tvm_target(self) -> Target:
        return Target(
            {
                "kind": "llvm",
                "mtriple": TRIPLE,
                "mcpu": "cortex-a76",  # ARMv8.2-A: NEON, fp16 and the dot product (sdot/udot)
                "mattr": ["+neon", "+dotprod", "+fullfp16"],
                **{f"fast-math-{flag}": True for flag in FAST_MATH_FLAGS},
            }
        )

    def computes_attention_variant(self, head_dim: int) -> bool:
        return head_dim % 8 == 0  # our CPU kernels; the cache's scalar ones otherwise

    def schedule_passes(self, target: Target) -> list[tvm.transform.Pass]:
        # The int8-activation kernels in x86's generic form: the x86 build's bits.
        return [
            use_x86_kernels(target),
            use_cpu_attention,
            ApplyDefaultSchedule(MatmulNT(), Elementwise(), RowReduction()),
        ]

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        executable.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler()))
