"""The code's shape, read from its source: no import circle, no private name imported from another
module, modules of a readable size, and a runtime that imports only its own dependencies."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO

PACKAGES = ("pipeline", "export", "models")
LINE_LIMIT = 700  # any module of the packages
STAGE_LINE_LIMIT = 350  # the modules that only wire others: the evaluate stage, the CLI's entry
WIRING = ("pipeline.evaluate", "export.__main__")
# what the runtime may import at module level: its core dependencies (pyproject's
# [project.dependencies]) and, in the modules of an extra, that extra
RUNTIME_IMPORTS = {"numpy", "onnxruntime", "PIL"}
EXTRA_IMPORTS = {"export.beam": {"apache_beam"}}


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of ``PACKAGES``."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, str | None, bool]]:
    """(module, imported name or None, at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name, id(node) in top) for alias in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, lazy imports included."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for module, imported, _ in imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in mods else module
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph = import_graph()
    assert graph["pipeline.evaluate"], "the graph must see the stage's imports"
    assert circles(graph) == []


def test_circles_are_found_when_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_imported_from_another_module():
    private = [
        f"{name} imports {imported} from {module}"
        for name, path in modules().items()
        for module, imported, _ in imports(path)
        if imported and imported.startswith("_") and module.split(".")[0] in PACKAGES
    ]
    assert private == []


def test_modules_stay_readable():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    too_long = {n: s for n, s in sizes.items() if s > LINE_LIMIT}
    assert too_long == {}, f"over {LINE_LIMIT} lines: {too_long}"
    wiring = {n: sizes[n] for n in WIRING if sizes[n] >= STAGE_LINE_LIMIT}
    assert wiring == {}, f"wiring modules at or over {STAGE_LINE_LIMIT} lines: {wiring}"


def test_the_runtime_imports_only_its_dependencies_at_module_level():
    allowed_stdlib = set(sys.stdlib_module_names) | {"__future__"}
    wrong = []
    for name, path in modules().items():
        if not name.startswith("export"):
            continue
        allowed = RUNTIME_IMPORTS | EXTRA_IMPORTS.get(name, set())
        for module, _, top_level in imports(path):
            root = module.split(".")[0]
            if root == "export" or root in allowed_stdlib:
                continue
            if root in allowed and (top_level or root in RUNTIME_IMPORTS):
                continue
            if not top_level and root in {"onnx", "pyarrow", "apache_beam"}:
                continue  # an extra's package, imported where that feature is used
            wrong.append(f"{name} imports {module}" + ("" if top_level else " (lazily)"))
    assert wrong == []
