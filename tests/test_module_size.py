"""No module of the package over 800 lines (issue 9): a module that grows past it holds more
than one concern and is split (as ``semconv`` was into its private parts) before it lands."""

from __future__ import annotations

from pathlib import Path

LIMIT = 800
PACKAGE = Path(__file__).resolve().parents[1] / "chaperone_otel"


def too_long(root: Path = PACKAGE, limit: int = LIMIT) -> list[str]:
    """``path: lines`` for every module of ``root`` over ``limit`` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            out.append(f"{path.relative_to(root.parent)}: {lines}")
    return out


def test_no_module_is_over_the_limit() -> None:
    assert too_long() == []


def test_the_check_finds_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "short.py").write_text("x = 1\n" * 10)
    (tmp_path / "long.py").write_text("x = 1\n" * 11)
    assert too_long(tmp_path, limit=10) == [f"{tmp_path.name}/long.py: 11"]
