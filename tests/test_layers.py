"""The import graph: one-way layers and no cycles (docs/architecture.md).

Layers, bottom up:
- the floor: the spec models and the dependency-free modules every layer may import
  (components.spec, specload, remote_code, fileio, evalset). It imports only itself;
- `components` (the behavior half and the shared machinery) and `vectorstore` (the knowledge half):
  neither imports the other, except vectorstore -> the floor;
- `adaptflow`: what composes both halves (the served system, compose, preflight) and the public API;
- `flows`: Prefect, the CLI and the server; it may import everything below.

Every import counts, at module level or inside a function (a function-level import is still a
dependency, and hides a cycle from Python's import-time check), except those under
`if TYPE_CHECKING:` (annotations only; never executed).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "vectorstore", "adaptflow", "flows")
FLOOR = ("components.spec", "components.spec.load", "components.spec.remote_code", "components.store.fileio",
         "components.spec.evalset", "components.spec.accelerate")

@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source} -> {self.target}"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of our packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def import_edges() -> list[Edge]:
    """Edges from each of our modules to each of our modules it imports (file and line kept)."""
    modules = module_files()
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        rel = str(path.relative_to(REPO))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _base(module, path, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]  # `import components.x.y` of a name inside a module
                if target in modules and target != module:
                    edges.append(Edge(module, target, rel, node.lineno))
    return list(dict.fromkeys(edges))  # `from x import (a, b)` is one edge


def layer(module: str) -> str:
    if module in FLOOR or any(module.startswith(f + ".") for f in FLOOR):
        return "floor"
    return module.split(".")[0]


ALLOWED = {
    "floor": {"floor"},
    "components": {"floor", "components"},
    "vectorstore": {"floor", "vectorstore"},
    "adaptflow": {"floor", "components", "vectorstore", "adaptflow"},
    "flows": {"floor", "components", "vectorstore", "adaptflow", "flows"},
}


def upward_imports(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if layer(e.target) not in ALLOWED[layer(e.source)]]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    source = "import os\nfrom components import spec\n\ndef f():\n    from vectorstore.metrics import x\n"
    tree = ast.parse(source)
    names = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in _imports(tree)]
    assert sorted(names) == ["components", "os", "vectorstore.metrics"]
    typing_only = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flows import cli\n")
    assert [n.module for n in _imports(typing_only)] == ["typing"]
    node = ast.parse("from .generation import x").body[0]
    assert _base("adaptflow.system.system", REPO / "adaptflow/system/system.py", node) == "adaptflow.system.generation"


def test_the_checks_catch_an_upward_import_and_a_cycle():
    edges = [Edge("components.training.recipe", "vectorstore.build", "components/training/recipe.py", 3),
             Edge("components.store.fileio", "components.models.load", "components/store/fileio.py", 9),
             Edge("vectorstore.build", "components.spec", "vectorstore/build.py", 1),
             Edge("a.x", "a.y", "a/x.py", 1), Edge("a.y", "a.z", "a/y.py", 1), Edge("a.z", "a.x", "a/z.py", 1)]
    assert [str(e) for e in upward_imports(edges[:3])] == [
        "components/training/recipe.py:3: components.training.recipe -> vectorstore.build",
        "components/store/fileio.py:9: components.store.fileio -> components.models.load"]
    assert cycles(edges) == [["a.x", "a.y", "a.z"]]


def test_no_module_imports_a_layer_above_its_own():
    edges = import_edges()
    assert len(edges) > 100  # the walk found the project's imports
    bad = upward_imports(edges)
    assert not bad, "upward imports (docs/architecture.md: floor < components, vectorstore < adaptflow < flows):\n" + \
        "\n".join(f"  {e}  ({layer(e.source)} may not import {layer(e.target)})" for e in bad)


def test_no_import_cycles():
    edges = import_edges()
    found = list(cycles(edges))
    lines = []
    for component in found:
        members = set(component)
        lines.append("  cycle: " + " <-> ".join(component))
        lines += [f"    {e}" for e in edges if e.source in members and e.target in members]
    assert not found, "import cycles (a function-level import is a dependency too):\n" + "\n".join(lines)
