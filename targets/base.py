"""What a target preset provides: its TVM target, its schedule passes and its export format."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from pathlib import Path

import tvm
from tvm.target import Target


class TargetPreset(abc.ABC):
    name: str
    description: str
    library_suffix: str = ".so"
    device: str = "cpu"
    # Host code registers its functions in a static "system library" (iOS, WebAssembly).
    system_lib: bool = False

    @abc.abstractmethod
    def tvm_target(self) -> Target:
        """The TVM target to compile for."""

    def with_options(self, arch: str | None = None) -> TargetPreset:
        """This preset configured by `mlc build` options; only some presets take them."""
        if arch is not None:
            raise ValueError(f"--arch does not apply to the {self.name} target (only to cuda)")
        return self

    def computes_attention_variant(self, head_dim: int) -> bool:
        """Whether this target's attention kernels compute sliding windows, soft-capping and
        ALiBi (`models/kv_cache.py: AttentionFacts`) for heads of `head_dim`."""
        return False

    def schedule_passes(self, target: Target) -> list[tvm.transform.Pass]:
        """Passes that schedule the fused TIR kernels; none by default."""
        return []

    def planned_memory_passes(self, target: Target) -> list[tvm.transform.Pass]:
        """Passes run once memory is planned (static buffers known); none by default."""
        return []

    @contextlib.contextmanager
    def compiling(self, target: Target) -> Iterator[None]:
        """Context held while TVM compiles (device compiler hooks)."""
        yield

    def prepare_module(self, mod: tvm.ir.IRModule, library_stem: str) -> tvm.ir.IRModule:
        """Last per-target edits of the Relax module before compiling."""
        if self.system_lib:
            prefix = "".join(c if c.isalnum() else "_" for c in library_stem) + "_"
            mod = mod.with_attr("system_lib_prefix", prefix)
        return mod

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        executable.export_library(str(path))
