"""The package's import graph has no cycle, counting every import statement in the source.

Built from the source with ``ast``, not from ``sys.modules``: an import inside a function (a
"lazy" import) or under ``TYPE_CHECKING`` is an edge as much as one at the top of a module,
because a cycle hidden that way still means two modules that each need the other (DESIGN §3:
layers import only downward). An edge goes to the module named: ``from . import semconv``
is an edge to ``chaperone_otel.semconv``; ``from .x import name`` to ``chaperone_otel.x``.
Loading a submodule also runs its package's ``__init__``, but that implicit step is not an
edge here (every package that re-exports from its submodules would otherwise be a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import chaperone_otel

PACKAGE_ROOT = Path(chaperone_otel.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its source."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in files else base)
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_package_has_no_import_cycle() -> None:
    """No two modules of chaperone_otel import each other, directly or through others,
    at module level, inside functions or under TYPE_CHECKING."""
    graph = import_graph(PACKAGE_ROOT)
    assert "chaperone_otel.semconv" in graph  # the walk found the package
    assert cycles(graph) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_detector_sees_lazy_relative_and_absolute_cycles(tmp_path: Path) -> None:
    """The check fails on the shapes it is meant to catch: a lazy import inside a function
    closing a cycle, a ``from .. import`` across subpackages, an absolute import, and an
    import only seen by type checkers; and it accepts a package whose imports go one way."""
    pkg = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "from .a import f\n",
            "a.py": "from . import b\ndef f():\n    return b\n",
            "b.py": "def g():\n    from .a import f  # lazy\n    return f\n",
            "sub/__init__.py": "",
            "sub/c.py": "from .. import d\n",
            "d.py": "import pkg.sub.c\n",
            "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .f import X\n",
            "f.py": "from .e import Y\n",
            "leaf.py": "from .a import f\nfrom . import sub\n",
        },
    )
    assert cycles(import_graph(pkg)) == [
        ["pkg.a", "pkg.b"],
        ["pkg.d", "pkg.sub.c"],
        ["pkg.e", "pkg.f"],
    ]
    acyclic = _write(
        tmp_path / "ok",
        {"__init__.py": "from .a import f\n", "a.py": "from . import b\n", "b.py": "X = 1\n"},
    )
    assert cycles(import_graph(acyclic)) == []


def _opentelemetry_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("opentelemetry"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_runtime_writes_otel_only_through_the_otel_writer() -> None:
    """The runtime modules produce records and state; only ``_otel/`` calls the OTel
    tracing, logs and metrics APIs. The one exception is context activation: the lifecycle
    makes the run's span current while the job's code runs."""
    runtime_modules = sorted(PACKAGE_ROOT.glob("_*.py"))
    assert len(runtime_modules) > 10
    uses = {p.name: _opentelemetry_imports(p) for p in runtime_modules}
    assert {name: found for name, found in uses.items() if found} == {
        "_lifecycle.py": {"opentelemetry.context"}
    }
    assert all(_opentelemetry_imports(p) for p in (PACKAGE_ROOT / "_otel").glob("_[a-z]*.py"))
