"""No import circle anywhere in the hand-written code: imports go one way, so any
module can be read (and imported) without first knowing who imports it.

Every import counts, wherever it is (inside a function, under TYPE_CHECKING),
except those under ``if __name__ == "__main__":``: they run in the module started
as a script (``__main__``), not in the module others import.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

from blueprint.topology import ROOT

PACKAGES = [
    "meshkit",
    "inventory_svc",
    "analytics_svc",
    "notify_svc",
    "blueprint",
    "devtools",
    "bench",
    "tests",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if _is_main_guard(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported(module: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from package import module`` imports the module; else the names are
            # attributes of ``base``.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        found |= {name for name in names if name in modules}
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    paths = {
        module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "node_modules" not in path.parts
    }
    modules = set(paths)
    return {module: imported(module, path, modules) for module, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_in_the_hand_written_code():
    graph = import_graph()
    assert len(graph) > 100  # every package was read
    assert circles(graph) == []


def test_the_check_finds_a_circle_and_ignores_a_main_guard(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    script = tmp_path / "relay.py"
    script.write_text(
        "from pkg import store\n\nif __name__ == '__main__':\n    from pkg import wiring\n"
    )
    assert imported("pkg.relay", script, {"pkg.store", "pkg.wiring"}) == {"pkg.store"}
