"""WebGPU in a browser or Deno: WGSL kernels with WebAssembly host code, linked into a `.wasm`.

The host code (the Relax VM program and the kernel launchers) is compiled for wasm32 by TVM's
LLVM and exported as object files; `web_runtime.link_wasm` links them with the TVM web runtime
(built once with emcc) into a standalone `.wasm` that the TVM JavaScript runtime instantiates.
Its functions register in a system library (`tvm.systemLib()` on the JavaScript side).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from . import web_runtime
from .gpu import GPUTarget


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class WebGPUTarget(GPUTarget):
    name: str = "webgpu"
    description: str = "WebGPU in browsers and Deno (WGSL kernels; standalone .wasm, needs emcc)"
    kind: str = "webgpu"
    device: str = "webgpu"
    host_triple: str | None = "wasm32-unknown-unknown-wasm"
    library_suffix: str = ".wasm"
    system_lib: bool = True

    def tvm_target(self) -> Target:
        # TVM's webgpu kind takes no `max_threads_per_block` (the shared GPU attributes).
        return Target(
            {
                "kind": self.kind,
                "max_num_threads": self.limits.max_threads_per_block,
                "max_shared_memory_per_block": self.limits.max_shared_memory_per_block,
                "thread_warp_size": self.limits.thread_warp_size,
                "supports_subgroups": False,
            },
            host={"kind": "llvm", "mtriple": self.host_triple},
        )

    def prepare_module(self, mod: tvm.ir.IRModule, library_stem: str) -> tvm.ir.IRModule:
        web_runtime.find_emcc()  # without emcc there is no `.wasm`: fail before compiling
        # One model per `.wasm`: its system library needs no symbol prefix, and without one
        # the TVM JavaScript runtime's `systemLib()` (and so web-llm-style loaders) finds it.
        return mod

    def export(self, executable: tvm.runtime.Executable, path: Path) -> None:
        def link(output: str, objects: list[str], **_: Any) -> None:
            web_runtime.link_wasm(Path(output), [Path(o) for o in objects], log=_log)

        link.object_format = "o"  # type: ignore[attr-defined]
        with tempfile.TemporaryDirectory(prefix="mlc-wasm-") as tmp:
            executable.export_library(str(path), fcompile=link, workspace_dir=tmp)
