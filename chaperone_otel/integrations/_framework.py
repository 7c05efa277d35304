"""The error an integration raises when its framework cannot be imported: not installed
(how to install it), installed but older than the integration needs (the installed version
and the minimum), or installed and recent but broken (the import's own error)."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Final

MINIMUMS: Final = {"celery": "5.3", "rq": "3.0", "dramatiq": "1.17"}
"""The oldest release of each framework an integration supports (the package's extras
``chaperone-otel[celery]``, ``[rq]`` and ``[dramatiq]`` require the same)."""

_NAMES: Final = {"celery": "Celery", "rq": "RQ", "dramatiq": "Dramatiq"}


def _release(version: str) -> tuple[int, ...] | None:
    """The leading release numbers of a version (``"1.16.2"`` -> ``(1, 16, 2)``)."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group().split(".")) if found else None


def framework_import_error(framework: str, error: ImportError) -> ImportError:
    """The ImportError ``chaperone_otel.integrations.<framework>`` raises (from ``error``,
    the failed import of the framework's names)."""
    name, minimum = _NAMES[framework], MINIMUMS[framework]
    where = f"chaperone_otel.integrations.{framework}"
    install = f"pip install 'chaperone-otel[{framework}]'"
    try:
        installed = metadata.version(framework)
    except metadata.PackageNotFoundError:
        return ImportError(f"{where} needs {name}: {install}")
    have, need = _release(installed), _release(minimum)
    if have is not None and need is not None and have < need:
        return ImportError(
            f"{where} needs {name} {minimum} or later, but {name} {installed} is installed: "
            f"{install} (or pip install -U '{framework}>={minimum}')"
        )
    return ImportError(f"{where}: {name} {installed} is installed but cannot be imported: {error}")
