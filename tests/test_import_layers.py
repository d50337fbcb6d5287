"""No package under firm_assets/ imports back into a package that imports it (directly or through
others), lazy imports inside functions included: a reader follows the layers one way."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "firm_assets"


def _unit(module: str) -> str | None:
    """The unit a module belongs to: its sub-package (`firm_assets.rl`), or the module itself when it
    sits at the top of firm_assets/ (`firm_assets.catalog`), since those range from the bottom layer
    (catalog, automation) to the top (definitions, cli)."""
    parts = module.split(".")
    if parts[0] != "firm_assets" or len(parts) < 2:
        return None
    if (ROOT / parts[1]).is_dir():
        return f"firm_assets.{parts[1]}"
    return f"firm_assets.{parts[1]}" if (ROOT / f"{parts[1]}.py").is_file() else None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: the first file that imports it}."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(ROOT.rglob("*.py")):
        source = _unit(_module_name(path))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                target = _unit(name)
                if source and target and target != source:
                    graph[source].setdefault(target, str(path.relative_to(ROOT.parent)))
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": "a.py"}, "b": {"c": "b.py"}, "c": {"a": "c.py"}, "d": {"a": "d.py"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": "a.py"}, "b": {}}) == []


def test_no_package_imports_back_into_one_that_imports_it() -> None:
    graph = import_graph()
    assert "firm_assets.rl" in graph and "firm_assets.critics" in graph  # the walk saw the packages
    found = cycles(graph)
    detail = [
        " <-> ".join(component)
        + ": "
        + "; ".join(f"{a} -> {b} in {graph[a][b]}" for a in component for b in component if b in graph[a])
        for component in found
    ]
    assert not found, "import cycles between packages:\n" + "\n".join(detail)
