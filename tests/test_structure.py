"""The package's shape: engine.py stays the scheduler, no module grows past a reviewable size,
and corral's modules import each other without a cycle (each one can be read, and imported,
after the ones it uses)."""

from __future__ import annotations

import ast
from pathlib import Path

import corral

PACKAGE = Path(corral.__file__).parent

#: the most lines engine.py may have: entry points and the scheduler, nothing else
ENGINE_MAX_LINES = 400
#: the most lines any module may have
MODULE_MAX_LINES = 700
#: modules being split on other branches (issue 11); the merge empties this set


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The corral modules ``name`` imports when it is imported (relative imports resolved;
    ``from a import b`` is module ``a.b`` when that is a module, else ``a``). Not counted: those
    under ``if TYPE_CHECKING:``, which never run, and those inside a function, which run when
    it is called, once every module is loaded (how ``io.open_source`` finds a format's module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_engine_is_the_scheduler_only():
    n = _lines(PACKAGE / "engine.py")
    assert n <= ENGINE_MAX_LINES, (
        f"corral/engine.py has {n} lines (at most {ENGINE_MAX_LINES}): it keeps the entry points "
        "and the scheduler; move a concern into the module that owns its box (docs/architecture.md)"
    )


def test_no_module_is_too_long():
    too_long = {}
    for path in _modules().values():
        shown = path.relative_to(PACKAGE.parent).as_posix()
        n = _lines(path)
        if n > MODULE_MAX_LINES:
            too_long[shown] = n
    assert not too_long, f"modules over {MODULE_MAX_LINES} lines: {too_long}; split them by concern"


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among corral's modules: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_under_type_checking_or_in_functions_do_not_count(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text(
        "from typing import TYPE_CHECKING\nimport corral.engine\n"
        "if TYPE_CHECKING:\n    from corral import job\nelse:\n    from . import errors\n"
        "def f():\n    from corral.store import leases\n",
        encoding="utf-8",
    )
    known = {"corral", "corral.engine", "corral.job", "corral.errors", "corral.store",
             "corral.store.leases", "corral.m"}
    assert _imported("corral.m", mod, known) == {"corral.engine", "corral.errors"}
