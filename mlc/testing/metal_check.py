"""Syntax- and type-check Metal Shading Language kernels with clang's C++ front end.

No Metal compiler runs off Apple's platforms, so TVM's generated Metal source is parsed as
C++17 (`clang.cindex`, PyPI `libclang`, which ships its own libclang) for arm64 with no system
headers: `#include <metal_stdlib>` finds our `metal_stdlib/metal_stdlib`, which declares only
what TVM's Metal code generator uses (address spaces as clang address spaces, `half` as
`_Float16`, vectors as `ext_vector_type`, SIMD-group shuffles, barriers, `as_type`, math) with
Metal's signatures. Undeclared names, wrong argument counts or types, pointers of one address
space given to another, a vector built from the wrong number of components, a swizzle past a
vector's end are errors, as Metal's compiler would report them.

Four things C++ spells otherwise are rewritten first, keeping every line where it was:
`1.0h` (a half literal) becomes `1.0f16`; `float4(...)` becomes `__metal_make<float4>(...)`
and TVM's cast `((float4)x)` becomes `(__metal_convert<float4>(x))`, both checked by the
header (component count; element-wise conversion); a `threadgroup` variable declared in a
function becomes `static` (C++ rejects automatic variables in an address space). A vector cast
in any other form is reported, not guessed at. Kernels must return void.

Only errors fail. One warning is turned off: `-Wunknown-attributes`, which every Metal
attribute (`[[buffer(0)]]`, `[[thread_position_in_grid]]`) raises; the attributes are checked
here instead (known names; buffer indices distinct within a kernel). No other warning is
enabled or hidden (clang's defaults; `-Wall` adds only unused-variable noise on TVM's code).
Not checked: what only Apple's compiler knows (its real `metal_stdlib`, resource limits, the
argument layout); explicit pointer casts between address spaces, which clang's C++ allows;
clang's vector comparisons give int vectors, not Metal's bool vectors (`select` takes both).
"""

from __future__ import annotations

import re
import struct
import tarfile
from pathlib import Path

from mlc.targets import ToolMissingError

INSTALL_HINT = "`pip install libclang==18.1.1` (clang's C++ front end, with its own libclang)"
HEADER_DIR = Path(__file__).parent / "metal_stdlib"
INCLUDE = "#include <metal_stdlib>"
ARGS = [
    "-x",
    "c++",
    "-std=c++17",
    "-fsyntax-only",
    "--target=arm64-apple-macos11",
    "-nostdinc",
    "-nostdinc++",
    "-ferror-limit=0",
    "-Wno-unknown-attributes",
    f"-I{HEADER_DIR}",
]
# The attributes TVM puts on kernel parameters (Metal Shading Language spec, table 5.2.1).
ATTRIBUTES = re.compile(
    r"buffer\(\d+\)|threadgroup\(\d+\)|thread_position_in_grid|thread_position_in_threadgroup"
    r"|threadgroup_position_in_grid|threads_per_threadgroup|threadgroups_per_grid"
    r"|thread_index_in_threadgroup|thread_index_in_simdgroup|simdgroup_index_in_threadgroup"
    r"|threads_per_simdgroup|simdgroups_per_threadgroup"
)
VECTOR_TYPE = r"(?:bool|char|uchar|short|ushort|int|uint|long|ulong|half|float)[234]"
_CONSTRUCTOR = re.compile(rf"(?<![\w.])({VECTOR_TYPE})\s*\(")
_CAST = re.compile(rf"\(\s*({VECTOR_TYPE})\s*\)")
_HALF_LITERAL = re.compile(r"(?<![\w.])(\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)[hH]\b")
_THREADGROUP_LOCAL = re.compile(r"^(\s+)(threadgroup\b[^\n]*;[ \t]*)$", re.MULTILINE)
_STATIC_ASSERT = re.compile(r"^static assertion failed due to requirement '.*': ")
_CONTEXT_NOTE = re.compile(r"requested here|^in file included from|^expression evaluates to")
_KERNEL = re.compile(r"\bkernel\s+\w+\s+([A-Za-z_]\w*)\s*\(")


def metal_sources_of_tar(path: str | Path) -> dict[str, str]:
    """The Metal source of each kernel in a `metal`/`iphone` build's `.tar`, by kernel name.

    TVM stores each kernel's source as its own string, `<length: u64 little-endian> <text>`,
    in the device-module blob of one of the objects; each starts with `#include <metal_stdlib>`.
    """
    sources: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            start = data.find(INCLUDE.encode())
            while start >= 8:
                (size,) = struct.unpack_from("<Q", data, start - 8)
                if not 0 < size <= len(data) - start:
                    raise ValueError(f"{member.name}: no length before a Metal source")
                text = data[start : start + size].decode()
                names = _KERNEL.findall(text)
                if len(names) != 1:
                    raise ValueError(f"{member.name}: a Metal source with kernels {names}")
                sources[names[0]] = text
                start = data.find(INCLUDE.encode(), start + size)
    return sources


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced parentheses")


def _rewrite(source: str) -> tuple[str, list[tuple[int, str]]]:
    """`source` in clang's C++ (lines kept), and the vector casts it could not rewrite."""
    text = _HALF_LITERAL.sub(r"\1f16", source)
    text = _THREADGROUP_LOCAL.sub(r"\1static \2", text)
    text = _CONSTRUCTOR.sub(r"__metal_make<\1>(", text)
    unhandled = []
    # Innermost (last) first, so that the spans found for outer casts stay right.
    for cast in reversed(list(_CAST.finditer(text))):
        start = cast.start()
        before = text[:start].rstrip()
        if not before.endswith("(") or re.search(r"[\w\])]\s*$", before[:-1]):
            unhandled.append((text.count("\n", 0, start) + 1, cast.group(0)))
            continue
        outer = len(before) - 1
        close = _matching_paren(text, outer)
        operand = text[cast.end() : close]
        text = f"{text[:outer]}(__metal_convert<{cast.group(1)}>({operand}){text[close:]}"
    return text, unhandled


def _kernel_at(source: str, line: int) -> str:
    """The kernel whose definition starts last at or before `line` (else the first one)."""
    found = [(source.count("\n", 0, m.start()) + 1, m.group(1)) for m in _KERNEL.finditer(source)]
    before = [name for start, name in found if start <= line]
    return before[-1] if before else (found[0][1] if found else "?")


def _attribute_errors(source: str) -> list[tuple[int, str]]:
    errors = []
    for kernel in _KERNEL.finditer(source):
        params = source[kernel.end() : _matching_paren(source, kernel.end() - 1)]
        first_line = source.count("\n", 0, kernel.start()) + 1
        buffers = re.findall(r"\[\[\s*buffer\((\d+)\)\s*\]\]", params)
        if len(buffers) != len(set(buffers)):
            errors.append((first_line, f"buffer indices repeat: {buffers}"))
    for attr in re.finditer(r"\[\[\s*(.*?)\s*\]\]", source):
        if not ATTRIBUTES.fullmatch(attr.group(1)):
            line = source.count("\n", 0, attr.start()) + 1
            errors.append((line, f"unknown Metal attribute [[{attr.group(1)}]]"))
    return errors


def check_metal_source(source: str, name: str = "kernel.metal") -> list[str]:
    """The errors clang finds in one Metal source (one compilation unit), as
    `"<kernel>:<line>: <message>"`; empty when it parses and type-checks."""
    try:
        import clang.cindex
    except ImportError as err:
        raise ToolMissingError(f"checking Metal source needs clang: {INSTALL_HINT}") from err

    if INCLUDE not in source:
        return [f"{_kernel_at(source, 1)}:1: no `{INCLUDE}`"]
    text, unhandled = _rewrite(source)
    problems = [
        (line, f"vector cast outside TVM's ((T)x) form: {cast}") for line, cast in unhandled
    ]
    problems += _attribute_errors(source)
    unit = clang.cindex.Index.create().parse(name, args=ARGS, unsaved_files=[(name, text)])
    for diag in unit.diagnostics:
        if diag.severity < clang.cindex.Diagnostic.Error:
            continue
        line, message = diag.location.line, diag.spelling
        message = _STATIC_ASSERT.sub("", message)
        notes = [n.spelling for n in diag.children if not _CONTEXT_NOTE.search(n.spelling)]
        message += "".join(f"; {note}" for note in notes[:2])
        if diag.location.file is None or diag.location.file.name != name:
            # In the header (a template instantiated for the kernel): point at the kernel's line.
            here = [n for n in diag.children if n.location.file and n.location.file.name == name]
            line = here[-1].location.line if here else 0
            message = f"{message} (metal_stdlib:{diag.location.line})"
        problems.append((line, message))
    for cursor in unit.cursor.get_children():
        if cursor.location.file is None or cursor.location.file.name != name:
            continue
        is_kernel = any(
            c.kind == clang.cindex.CursorKind.ANNOTATE_ATTR and c.spelling == "metal_kernel"
            for c in cursor.get_children()
        )
        if is_kernel and cursor.result_type.spelling != "void":
            problems.append(
                (cursor.location.line, f"kernel {cursor.spelling} does not return void")
            )
    return [f"{_kernel_at(source, line)}:{line}: {message}" for line, message in sorted(problems)]
