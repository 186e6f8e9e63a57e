"""The blob in which a TVM library carries its device modules, and how to swap their code.

Layout (tvm_ffi `ProcessLibraryBin`), little-endian, strings and byte arrays prefixed by their
u64 length: `<nbytes: u64> <import tree: indptr vec<u64>, child indices vec<u64>>` then per
module `<kind: str>` and, unless the kind is `_lib` (the host library itself), `<bytes>`. A
device module's bytes are `<fmt: str> <function table> <code: bytes>`: the code comes last.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

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


def replace_device_code(
    blob: bytes, kind: str, new_fmt: str, code_by_source: Mapping[str, bytes]
) -> bytes:
    """`blob` with each `kind` module's source code replaced by its compiled code, format
    `new_fmt`; the function table (names, argument types, launch tags) is kept as it is."""
    reader = _Reader(blob)
    reader.u64()  # total size, recomputed below
    body_start = reader.pos
    for _ in range(2):  # indptr, child indices
        reader.raw(reader.u64() * _U64.size)
    out = bytearray(blob[body_start : reader.pos])
    replaced = 0
    while reader.pos < len(blob):
        module_kind = reader.string()
        out += _string(module_kind)
        if module_kind == b"_lib":
            continue
        module = reader.string()
        if module_kind == kind.encode():
            module = _swap_code(module, new_fmt, code_by_source)
            replaced += 1
        out += _string(module)
    if replaced != len(code_by_source):
        raise ValueError(
            f"found {replaced} {kind} modules in the library, expected {len(code_by_source)}"
        )
    return _U64.pack(len(out)) + bytes(out)


def _swap_code(module: bytes, new_fmt: str, code_by_source: Mapping[str, bytes]) -> bytes:
    reader = _Reader(module)
    reader.string()  # the old format ("cuda": source)
    for source, code in code_by_source.items():
        tail = _string(source.encode())
        if module.endswith(tail):
            table = module[reader.pos : len(module) - len(tail)]
            return _string(new_fmt.encode()) + table + _string(code)
    raise ValueError("a device module's code is not the source TVM generated for it")


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
