"""What a target preset provides: its TVM target, its schedule passes and its export format."""

from __future__ import annotations

import abc
from pathlib import Path

import tvm
from tvm.target import Target


class TargetPreset(abc.ABC):
    name: str
    description: str
    library_suffix: str = ".so"
    device: str = "cpu"

    @abc.abstractmethod
    def tvm_target(self) -> Target:
        """The TVM target to compile for."""

    def schedule_passes(self, target: Target) -> list[tvm.transform.Pass]:
        """Passes that schedule the fused TIR kernels; none by default."""
        return []

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        executable.export_library(str(path))
