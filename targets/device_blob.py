"""The blob in which a TVM library carries its device modules, and how to swap their code.

Layout (tvm_ffi `ProcessLibraryBin`), little-endian, strings and byte arrays prefixed by their
u64 length: `<nbytes: u64> <import tree: indptr vec<u64>, child indices vec<u64>>` then per
module `<kind: str>` and, unless the kind is `_lib` (the host library itself), `<bytes>`. A
device module's bytes are `<fmt: str> <function table> <code: bytes>`: the code comes last.
"""

from __future__ import annotations

import ctypes
import dataclasses
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import tvm
import tvm_ffi

_U64 = struct.Struct("<Q")


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += _U64.size
        return value

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError("truncated device-module blob")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> bytes:
        return self.raw(self.u64())


def _string(value: bytes) -> bytes:
    return _U64.pack(len(value)) + value


def modules_of_kind(mod: tvm.runtime.Module, kind: str) -> list[tvm.runtime.Module]:
    """Every module of `kind` in `mod`'s import tree."""
    return mod._collect_from_import_tree(lambda m: m.kind == kind)


def rewrite_modules(
    blob: bytes, kind: str, rewrite: Callable[[bytes], tuple[str, bytes]]
) -> tuple[bytes, int]:
    """`blob` with each `kind` module replaced by `rewrite(module bytes) -> (kind, bytes)`, and
    how many were replaced."""
    reader = _Reader(blob)
    reader.u64()  # total size, recomputed below
    body_start = reader.pos
    for _ in range(2):  # indptr, child indices
        reader.raw(reader.u64() * _U64.size)
    out = bytearray(blob[body_start : reader.pos])
    replaced = 0
    while reader.pos < len(blob):
        module_kind = reader.string()
        if module_kind == b"_lib":
            out += _string(module_kind)
            continue
        module = reader.string()
        if module_kind == kind.encode():
            new_kind, module = rewrite(module)
            module_kind = new_kind.encode()
            replaced += 1
        out += _string(module_kind) + _string(module)
    return _U64.pack(len(out)) + bytes(out), replaced


def replace_device_code(
    blob: bytes, kind: str, new_fmt: str, code_by_source: Mapping[str, bytes]
) -> bytes:
    """`blob` with each `kind` module's source code replaced by its compiled code, format
    `new_fmt`; the function table (names, argument types, launch tags) is kept as it is."""
    blob, replaced = rewrite_modules(
        blob, kind, lambda m: (kind, _swap_code(m, new_fmt, code_by_source))
    )
    if replaced != len(code_by_source):
        raise ValueError(
            f"found {replaced} {kind} modules in the library, expected {len(code_by_source)}"
        )
    return blob


def _swap_code(module: bytes, new_fmt: str, code_by_source: Mapping[str, bytes]) -> bytes:
    reader = _Reader(module)
    reader.string()  # the old format ("cuda": source)
    for source, code in code_by_source.items():
        tail = _string(source.encode())
        if module.endswith(tail):
            table = module[reader.pos : len(module) - len(tail)]
            return _string(new_fmt.encode()) + table + _string(code)
    raise ValueError("a device module's code is not the source TVM generated for it")


@dataclasses.dataclass
class FunctionInfo:
    """One kernel's entry in a device module's function table (TVM's `runtime.FunctionInfo`)."""

    name: str
    arg_types: list[str]  # "handle" (a buffer), "int32", "float32", ...
    launch_param_tags: list[str]  # what the extents after the arguments are: "blockIdx.x", ...


# DLDataType codes (dlpack.h).
_DTYPE_CODES = {0: "int", 1: "uint", 2: "float", 3: "handle", 4: "bfloat"}


def read_device_module(module: bytes) -> tuple[str, dict[str, FunctionInfo], bytes]:
    """A device module's (format, function table, code).

    The table is `<count: u64>` entries of `<key: str> <name: str> <arg_types: vec<DLDataType>>
    <launch_param_tags: vec<str>> <arg_extra_tags: vec<i32>>`; a DLDataType is code u8, bits
    u8, lanes u16.
    """
    reader = _Reader(module)
    fmt = reader.string().decode()
    table = {}
    for _ in range(reader.u64()):
        key = reader.string().decode()
        name = reader.string().decode()
        arg_types = []
        for _ in range(reader.u64()):
            code, bits, lanes = struct.unpack("<BBH", reader.raw(4))
            dtype = "handle" if code == 3 else f"{_DTYPE_CODES.get(code, code)}{bits}"
            arg_types.append(dtype + (f"x{lanes}" if lanes != 1 else ""))
        tags = [reader.string().decode() for _ in range(reader.u64())]
        reader.raw(reader.u64() * 4)  # arg_extra_tags: TMA descriptors (CUDA only)
        table[key] = FunctionInfo(name, arg_types, tags)
    code = reader.string()
    if reader.pos != len(module):
        raise ValueError(f"{len(module) - reader.pos} bytes left after a {fmt} device module")
    return fmt, table, code


def kernel_sources(source: str) -> dict[str, str]:
    """A device module's source (the code TVM generates: OpenCL C, WGSL, ...) split per kernel:
    each `// Function: NAME` chunk stands alone."""
    chunks = source.split("// Function: ")[1:]
    return {c.split("\n", 1)[0].strip(): "// Function: " + c for c in chunks}


def read_library_blob(library: Path) -> bytes:
    """The device-module blob of an exported library for this host (it is loaded to read it:
    only the data symbol is touched, nothing runs)."""
    lib = ctypes.CDLL(str(library), ctypes.RTLD_LOCAL)
    symbol = tvm_ffi.get_global_func("runtime.ModuleImportsBlobName")()
    address = ctypes.addressof(ctypes.c_char.in_dll(lib, symbol))
    size = _U64.unpack(ctypes.string_at(address, _U64.size))[0]
    return ctypes.string_at(address, _U64.size + size)


def blob_to_c(blob: bytes, is_system_lib: bool) -> str:
    """C source defining the blob under the symbol the TVM runtime looks for."""
    if is_system_lib:
        raise ValueError("packing device code into a system library is not supported here")
    symbol = tvm_ffi.get_global_func("runtime.ModuleImportsBlobName")()
    rows = (",".join(f"{b:#04x}" for b in blob[i : i + 32]) + "," for i in range(0, len(blob), 32))
    return "\n".join(
        [
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            f"extern const unsigned char {symbol}[];",
            f"const unsigned char {symbol}[{len(blob)}] = {{",
            *rows,
            "};",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "",
        ]
    )
