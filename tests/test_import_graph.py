"""The layering of `yolo_dms`, read from the source: every import of one of its modules by another, at module level
or inside a function (a lazy import is a dependency too), forms a graph without cycles in which `core` imports
neither `search` nor `tools`, and `search` does not import `tools`."""

from __future__ import annotations

import ast
from importlib.util import resolve_name
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yolo_dms"


def module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, for its `__init__.py`)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package's modules an import statement in `module` names: `from a import b` is module `a.b` where that
    is a module, else `a` itself; a relative import is resolved against `module`'s package."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & MODULES.keys()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names} & MODULES.keys()


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> the package modules it imports, each with the line of its first import."""
    graph = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in imported(module, node) - {module}:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


GRAPH = import_graph()


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The cycles a depth-first walk closes (one per edge back to a module still being walked), each as the
    modules around it; none exactly when the graph has no cycle."""
    found: list[list[str]] = []
    walking: list[str] = []
    walked: set[str] = set()

    def walk(module: str) -> None:
        walking.append(module)
        for target in sorted(graph[module]):
            if target in walking:
                found.append([*walking[walking.index(target):], target])
            elif target not in walked:
                walk(target)
        walking.pop()
        walked.add(module)

    for module in sorted(graph):
        if module not in walked:
            walk(module)
    return found


def described(cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_graph_reads_imports_at_every_level():
    """The reader finds lazy imports and resolves `from package import module` to the module."""
    assert "yolo_dms.core.prune" in GRAPH["yolo_dms.core.latency"]  # imported inside `time_structure`
    assert "yolo_dms.core.handlers.base" in GRAPH["yolo_dms.core.supernet"]
    assert {"yolo_dms.search.run", "yolo_dms.tools.demo"} <= GRAPH["yolo_dms.cli"].keys()


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(described(c) for c in found)


@pytest.mark.parametrize("layer, above", [("yolo_dms.core", ("yolo_dms.search", "yolo_dms.tools")),
                                          ("yolo_dms.search", ("yolo_dms.tools",))])
def test_lower_layers_never_import_higher_ones(layer, above):
    offending = [
        f"{module} imports {target} (line {line})"
        for module, edges in sorted(GRAPH.items()) if module == layer or module.startswith(f"{layer}.")
        for target, line in sorted(edges.items()) if target.startswith(tuple(f"{a}." for a in above)) or target in above
    ]
    assert not offending, "\n".join(offending)
