"""Every public module declares its API once, in ``__all__`` (httpx's ``test_exported_members``).

A module is public when no part of its dotted name starts with ``_``. For each one, every
name it defines or re-exports from inside the package without an underscore is in
``__all__``, ``__all__`` is sorted, and each listed name resolves. Names imported from outside
the package (``Any``, ``dataclass``) are not the module's members; a chaperone name a public
module imports for its own use must be imported under an underscore alias, so users never
find an internal through a public module.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chaperone_otel"


def _public_modules(root: Path = PACKAGE) -> list[str]:
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = [*path.relative_to(root.parent).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return names


def _members(module_name: str, source: str) -> set[str]:
    """Names the module's own top-level code binds: definitions, assignments, and names
    imported from inside the package (relative or ``chaperone_otel.``)."""
    members: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            members.add(node.name)
        elif isinstance(node, ast.Assign):
            members |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            inside = node.level > 0 or (node.module or "").startswith("chaperone_otel")
            if inside:
                members |= {a.asname or a.name for a in node.names}
    members.discard("__all__")
    return {m for m in members if not m.startswith("_")}


def _check(module_name: str, source: str) -> list[str]:
    module = importlib.import_module(module_name)
    declared = getattr(module, "__all__", None)
    if declared is None:
        return [f"{module_name} has no __all__"]
    problems = []
    if list(declared) != sorted(declared):
        problems.append(f"{module_name}.__all__ is not sorted")
    problems += [
        f"{module_name}.__all__ lists {n!r}, which does not resolve"
        for n in declared
        if not hasattr(module, n)
    ]
    undeclared = {
        n
        for n in _members(module_name, source) - set(declared)
        if not isinstance(getattr(module, n, None), type(ast))
    }
    problems += [
        f"{module_name}.{n} is public but not in __all__ (add it, or import it as _{n})"
        for n in sorted(undeclared)
    ]
    return problems


def _source(module_name: str) -> str:
    path = PACKAGE.parent.joinpath(*module_name.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return file.read_text()


@pytest.mark.parametrize("module_name", _public_modules())
def test_public_module_declares_exactly_its_members(module_name: str) -> None:
    """No public name of a public module is missing from its __all__, and __all__ resolves."""
    assert _check(module_name, _source(module_name)) == []


def test_the_check_finds_an_undeclared_name_and_an_unsorted_all() -> None:
    """The rule can fail: a public definition left out of __all__, an internal imported
    without an underscore, and an unsorted __all__ are each reported."""
    source = (
        "from chaperone_otel._units import parse_bytes\n"
        "from typing import Any\n"
        "__all__ = ['b', 'a']\n"
        "def a(): ...\n"
        "def b(): ...\n"
        "def helper(): ...\n"
    )
    module = type(ast)("chaperone_otel_fake")
    exec(compile(source, "fake", "exec"), module.__dict__)
    sys.modules["chaperone_otel_fake"] = module
    try:
        problems = _check("chaperone_otel_fake", source)
    finally:
        del sys.modules["chaperone_otel_fake"]
    assert "chaperone_otel_fake.__all__ is not sorted" in problems
    assert any(".helper is public" in p for p in problems)
    assert any(".parse_bytes is public" in p for p in problems)
    assert not any(".Any " in p for p in problems)


def test_public_modules_are_found() -> None:
    """The walk finds the package, its public subpackages and modules, and no private one."""
    modules = _public_modules()
    assert {
        "chaperone_otel",
        "chaperone_otel.semconv",
        "chaperone_otel.sink",
        "chaperone_otel.testing",
    } <= set(modules)
    assert not [m for m in modules if "._" in m]
