"""OpenCL C kernel → Vulkan SPIR-V with clspv (PyPI `pyclspv`), validated by `spirv-val`.

clspv records each kernel's interface in `NonSemantic.ClspvReflection` instructions: which
descriptor binding each buffer argument uses, where each scalar argument sits in the push
constants, and which specialization constants set the workgroup size. The loader needs that
interface to dispatch the kernel; it is read back here from `spirv-dis` output.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlc.runtime.host import ToolMissingError

SPIRV_TOOLS_HINT = "install SPIRV-Tools: `apt-get install spirv-tools`"
CLSPV_HINT = "install clspv's Python bindings: `pip install pyclspv`"
VULKAN_ENV = "vulkan1.2"
# Reflection instructions that only describe; anything else changes how to dispatch.
# "42" is WorkgroupVariableSize (a static __local array and its size), unnamed by spirv-dis.
DESCRIPTIVE = {"Kernel", "ArgumentInfo", "SpecConstantWorkgroupSize", "WorkgroupVariableSize", "42"}


@dataclasses.dataclass
class KernelInterface:
    """How to call one SPIR-V kernel compiled by clspv."""

    name: str
    buffers: dict[int, int]  # argument ordinal -> storage-buffer binding (set 0)
    push_constants: dict[int, tuple[int, int]]  # argument ordinal -> (offset, size) in bytes
    workgroup_size_spec_ids: tuple[int, int, int]

    @property
    def push_constant_size(self) -> int:
        end = max((o + s for o, s in self.push_constants.values()), default=0)
        return -(-end // 4) * 4

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "buffers": {str(k): v for k, v in self.buffers.items()},
            "push_constants": {str(k): list(v) for k, v in self.push_constants.items()},
            "push_constant_size": self.push_constant_size,
            "workgroup_size_spec_ids": list(self.workgroup_size_spec_ids),
        }


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"the vulkan target needs `{name}`: {SPIRV_TOOLS_HINT}")
    return path


def clspv_compile(source: str) -> bytes:
    """SPIR-V for the OpenCL C `source` (one kernel), with clspv's default interface."""
    try:
        import pyclspv
    except ImportError as err:
        raise ToolMissingError(f"the vulkan target needs clspv: {CLSPV_HINT}") from err
    try:
        return pyclspv.compile(source)  # `optimize=True` is unimplemented in 0.0.1
    except Exception as err:  # pyclspv raises a bare RuntimeError with clspv's log
        raise RuntimeError(f"clspv could not compile the kernel:\n{err}") from err


def validate(spirv: bytes, name: str) -> None:
    """Raise unless `spirv-val` accepts the module for Vulkan."""
    with tempfile.TemporaryDirectory(prefix="mlc-spirv-") as tmp:
        path = Path(tmp, f"{name}.spv")
        path.write_bytes(spirv)
        run = subprocess.run(
            [_tool("spirv-val"), "--target-env", VULKAN_ENV, str(path)],
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        raise RuntimeError(f"spirv-val rejects kernel {name}:\n{run.stderr or run.stdout}")


def disassemble(spirv: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="mlc-spirv-") as tmp:
        path = Path(tmp, "k.spv")
        path.write_bytes(spirv)
        run = subprocess.run(
            [_tool("spirv-dis"), str(path)], capture_output=True, text=True, check=True
        )
    return run.stdout


def interface(spirv: bytes, name: str) -> KernelInterface:
    """The kernel's dispatch interface, from clspv's reflection instructions."""
    text = disassemble(spirv)
    match = re.search(r'(%\w+) = OpExtInstImport "NonSemantic\.ClspvReflection', text)
    if match is None:
        raise RuntimeError(f"kernel {name}: clspv emitted no reflection")
    reflection = re.compile(rf"= OpExtInst %void {re.escape(match.group(1))} (\w+)(.*)$")
    buffers, push, spec = {}, {}, (0, 1, 2)
    for line in text.splitlines():
        found = reflection.search(line)
        if not found:
            continue
        kind, operands = (
            found.group(1),
            [int(v) for v in re.findall(r"%uint_(\d+)", found.group(2))],
        )
        if kind == "ArgumentStorageBuffer":
            ordinal, descriptor_set, binding = operands[:3]
            if descriptor_set != 0:
                raise NotImplementedError(f"kernel {name}: descriptor set {descriptor_set}")
            buffers[ordinal] = binding
        elif kind == "ArgumentPodPushConstant":
            ordinal, offset, size = operands[:3]
            push[ordinal] = (offset, size)
        elif kind == "SpecConstantWorkgroupSize":
            spec = tuple(operands[:3])
        elif kind not in DESCRIPTIVE:
            raise NotImplementedError(f"kernel {name}: clspv reflection {kind} is not supported")
    return KernelInterface(name, buffers, push, spec)


# `for (int j = 0; j < 2; ++j) {`, as TVM's OpenCL codegen writes loops (int or long counters).
TWO_TRIP_LOOP = re.compile(
    r"for \((int|long) (\w+) = (?:\(long\))?0; \2 < (?:\(long\))?2; \+\+\2\) \{"
)


def unroll_two_trip_loops(source: str) -> str:
    """`source` with every two-iteration loop written out twice, its counter a constant.

    pyclspv 0.0.1's clspv miscompiles such a loop when its counter indexes a private array:
    both iterations store into element 0 (the SPIR-V shows it, `tests/test_vulkan_kernels.py`
    reproduces it). TVM's decode-attention kernels have them (`S_local[j]`, j < 2), which gave
    inf/NaN on llvmpipe. TIR's own unrolling cannot take them: it breaks the cross-thread
    reductions they contain.
    """
    while match := TWO_TRIP_LOOP.search(source):
        end = _closing_brace(source, match.end() - 1)
        body = source[match.end() : end]
        if re.search(r"\b(break|continue)\b", body):
            raise NotImplementedError("unrolling a loop with break/continue")
        ctype, var = match.groups()
        copies = "".join(f"{{ const {ctype} {var} = {i};{body}}}" for i in range(2))
        source = source[: match.start()] + copies + source[end + 1 :]
    return source


def _closing_brace(source: str, start: int) -> int:
    depth = 0
    for i in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced braces in the kernel source")


def compile_kernel(source: str, name: str) -> tuple[bytes, KernelInterface]:
    """Compile (two-iteration loops unrolled first), validate and describe one kernel."""
    spirv = clspv_compile(unroll_two_trip_loops(source))
    validate(spirv, name)
    return spirv, interface(spirv, name)


def interface_from_json(data: dict) -> KernelInterface:
    """The inverse of `KernelInterface.to_json` (the `vulkan` artifact's manifest entries)."""
    return KernelInterface(
        data["name"],
        {int(k): v for k, v in data["buffers"].items()},
        {int(k): (v[0], v[1]) for k, v in data["push_constants"].items()},
        tuple(data["workgroup_size_spec_ids"]),
    )
