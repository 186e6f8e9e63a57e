"""64-bit ARM Linux and Android CPUs (AArch64 with NEON and the dot-product extension), compiled
here with LLVM and linked with the GNU cross compiler (Debian's `g++-aarch64-linux-gnu`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import tvm
from tvm.support import cc
from tvm.target import Target

from mlc.runtime.host import ToolMissingError

from .llvm import FAST_MATH_FLAGS, LLVMTarget

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


class Arm64Target(LLVMTarget):
    """The host CPU's schedules and kernels, for AArch64."""

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

    def has_int8_kernels(self, target: Target) -> bool:
        return True  # x86's kernels in their generic form: the x86 build's bits

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        executable.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler()))
