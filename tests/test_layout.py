"""The product's import graph, read with `ast` (nothing is imported): product modules never
import the test harness (`mlc.testing`), and no product modules import each other in a circle.

The product is every `.py` file of the folders pyproject's `package-dir` maps into the `mlc`
namespace, `mlc/testing/` excepted. Imports anywhere in a file count, inside functions too (a
lazy import still ties the two modules together); imports under `if TYPE_CHECKING:` never run
and count only for the `mlc.testing` rule. `import a.b` and `from a import b` (b a module) are
edges to `a.b` alone: a package's `__init__` importing its own submodules is an ordinary edge,
and a submodule is not taken to depend on its package's `__init__` unless it imports from it.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
HARNESS = "mlc.testing"


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # absolute name of what is imported (a module, or the package it comes from)
    line: int
    runs: bool  # False under `if TYPE_CHECKING:`


def product_sources(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every product `.py` file, as pyproject's package-dir maps it."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir = pyproject["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for prefix, folder in package_dir.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([prefix, *parts])
            if "__pycache__" in parts or _in_harness(name):
                continue
            if name in modules and modules[name] != path:  # two package-dir folders overlap
                continue
            modules[name] = path
    return modules


def _in_harness(module: str) -> bool:
    return module == HARNESS or module.startswith(HARNESS + ".")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in `source` (the module `module`), resolved to absolute module names;
    `from X import y` is an import of `X.y` when that is a module in `known` (or in the
    harness), else of `X`."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, runs: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, runs) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                # `from mlc import testing`: the harness is no module in `known`
                into_harness = _in_harness(sub) and not _in_harness(origin)
                what = sub if sub in known or into_harness else origin
                found.append(Import(what, node.lineno, runs))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runs)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, runs)

    visit(ast.parse(source), True)
    return found


def read_imports(sources: dict[str, tuple[str, bool]]) -> dict[str, list[Import]]:
    """Module -> its imports, for modules given as name -> (source, is_package)."""
    known = set(sources)
    return {m: imports_of(src, m, pkg, known) for m, (src, pkg) in sources.items()}


def harness_imports(imports: dict[str, list[Import]]) -> list[tuple[str, int, str]]:
    """(module, line, imported) for every import of `mlc.testing` or below."""
    return [
        (m, i.line, i.module)
        for m, found in sorted(imports.items())
        for i in found
        if _in_harness(i.module)
    ]


def import_graph(imports: dict[str, list[Import]]) -> dict[str, set[str]]:
    """Module -> the product modules it imports (imports that run)."""
    return {
        m: {i.module for i in found if i.runs and i.module in imports}
        for m, found in imports.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module, or one
    module importing itself (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def _product_imports() -> tuple[dict[str, Path], dict[str, list[Import]]]:
    files = product_sources()
    sources = {m: (p.read_text(), p.name == "__init__.py") for m, p in files.items()}
    return files, read_imports(sources)


def test_the_product_never_imports_the_test_harness():
    files, imports = _product_imports()
    assert len(files) > 50 and "mlc.targets.vulkan" in files and HARNESS not in files
    bad = [
        f"{files[m].relative_to(ROOT)}:{line}: imports {what}"
        for m, line, what in harness_imports(imports)
    ]
    assert not bad, "product code imports the test harness:\n" + "\n".join(bad)


def test_product_modules_import_each_other_in_no_circle():
    _, imports = _product_imports()
    found = cycles(import_graph(imports))
    assert not found, "import cycles among product modules:\n" + "\n".join(map(str, found))


COMPILER_SIDE = ("mlc.build", "mlc.compiler", "mlc.pipeline", "mlc.targets", "mlc.models",
                 "mlc.quantization", "mlc.gguf", "mlc.hf_checkpoint")  # fmt: skip


def compiler_imports(imports: dict[str, list[Import]]) -> list[tuple[str, int, str]]:
    """(runtime module, line, imported) for every import of the compiler side by the runtime."""
    return [
        (m, i.line, i.module)
        for m, found in sorted(imports.items())
        if m == "mlc.runtime" or m.startswith("mlc.runtime.")
        for i in found
        if any(i.module == c or i.module.startswith(c + ".") for c in COMPILER_SIDE)
    ]


def test_the_runtime_imports_nothing_from_the_compiler_side():
    files, imports = _product_imports()
    bad = [
        f"{files[m].relative_to(ROOT)}:{line}: imports {what}"
        for m, line, what in compiler_imports(imports)
    ]
    assert not bad, "the runtime imports the compiler side:\n" + "\n".join(bad)


# The checks above, seen failing on made-up modules.


def test_a_runtime_import_of_the_compiler_is_found():
    sources = {
        "mlc.runtime.engine": ("import numpy\nfrom mlc.targets import get_target\n", False),
        "mlc.runtime.host": ("import os\n", False),
    }
    found = compiler_imports(read_imports(sources))
    assert found == [("mlc.runtime.engine", 2, "mlc.targets")]


def test_a_circle_through_a_lazy_import_is_found():
    sources = {
        "mlc.targets": ("from . import a\n", True),
        "mlc.targets.a": ("from .b import run\n", False),
        "mlc.targets.b": ("def run():\n    from mlc.targets.a import x\n", False),
        "mlc.targets.c": ("import mlc.targets.a\n", False),
    }
    assert cycles(import_graph(read_imports(sources))) == [["mlc.targets.a", "mlc.targets.b"]]


def test_a_package_importing_its_submodules_and_type_checking_imports_make_no_circle():
    sources = {
        "mlc.targets": ("from . import a\nfrom .b import B\n", True),
        "mlc.targets.a": ("from . import b\n", False),
        "mlc.targets.b": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
            False,
        ),
    }
    graph = import_graph(read_imports(sources))
    assert graph["mlc.targets"] == {"mlc.targets.a", "mlc.targets.b"}
    assert cycles(graph) == []
    assert cycles({"x": {"x"}}) == [["x"]]


def test_an_import_of_the_harness_is_found_with_its_line():
    source = "import numpy\n\n\ndef f():\n    from ..testing.kernel_check import lower\n"
    sources = {
        "mlc.targets.gpu": (source, False),
        "mlc.cli": ("from mlc import testing\nfrom mlc import build\n", False),
        "mlc.build": ("import mlc.testing.random_model as rm\n", False),
    }
    assert harness_imports(read_imports(sources)) == [
        ("mlc.build", 1, "mlc.testing.random_model"),
        ("mlc.cli", 1, "mlc.testing"),
        ("mlc.targets.gpu", 5, "mlc.testing.kernel_check"),
    ]
