"""An integration whose framework cannot be imported says why: not installed (the extra to
install), too old (the installed version and the minimum: RQ 1.16 has no ``AbandonedJobError``,
and "needs RQ: pip install rq" with RQ installed sent users in circles), or installed and
recent but broken (the import's own error). Simulated in process: a bare module stands for
the framework, and its distribution's version is patched."""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest

import chaperone_otel.integrations as integrations
from chaperone_otel.integrations._framework import MINIMUMS

NAMES = {"celery": "Celery", "rq": "RQ", "dramatiq": "Dramatiq"}
FRAMEWORKS = sorted(NAMES)


@pytest.fixture
def fake_framework(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str | None], None]]:
    """``fake(framework, version)``: the framework is a module without its names (as an
    old release lacking them is) and its distribution reports ``version`` (None: not
    installed). The integration modules and the framework's modules are imported afresh
    and everything in ``sys.modules`` is as it was afterwards."""
    saved = dict(sys.modules)
    attributes = {name: getattr(integrations, name, None) for name in dir(integrations)}
    real_version = metadata.version

    def fake(framework: str, version: str | None) -> None:
        for name in list(sys.modules):
            if name == framework or name.startswith((f"{framework}.", "chaperone_otel.integrations.")):
                del sys.modules[name]
        sys.modules[framework] = types.ModuleType(framework)

        def patched(distribution: str) -> str:
            if distribution != framework:
                return real_version(distribution)
            if version is None:
                raise metadata.PackageNotFoundError(distribution)
            return version

        monkeypatch.setattr(metadata, "version", patched)

    yield fake
    for name in set(sys.modules) - set(saved):
        del sys.modules[name]
    sys.modules.update(saved)
    for name in set(dir(integrations)) - set(attributes):
        delattr(integrations, name)
    for name, value in attributes.items():
        setattr(integrations, name, value)


def _import_error(framework: str) -> str:
    with pytest.raises(ImportError) as raised:
        importlib.import_module(f"chaperone_otel.integrations.{framework}")
    return str(raised.value)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_framework_too_old_names_the_installed_version_and_the_minimum(
    fake_framework: Callable[[str, str | None], None], framework: str
) -> None:
    old = {"celery": "5.2.7", "rq": "1.16.2", "dramatiq": "1.16.0"}[framework]
    fake_framework(framework, old)
    message = _import_error(framework)
    assert f"{NAMES[framework]} {old} is installed" in message, message
    assert f"needs {NAMES[framework]} {MINIMUMS[framework]} or later" in message, message
    assert f"pip install 'chaperone-otel[{framework}]'" in message, message


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_missing_framework_names_the_extra_to_install(
    fake_framework: Callable[[str, str | None], None], framework: str
) -> None:
    fake_framework(framework, None)
    message = _import_error(framework)
    assert message == (
        f"chaperone_otel.integrations.{framework} needs {NAMES[framework]}: "
        f"pip install 'chaperone-otel[{framework}]'"
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_recent_framework_that_cannot_be_imported_gives_the_import_error(
    fake_framework: Callable[[str, str | None], None], framework: str
) -> None:
    fake_framework(framework, "99.0")
    message = _import_error(framework)
    assert f"{NAMES[framework]} 99.0 is installed but cannot be imported: " in message
    assert framework in message.split("cannot be imported: ", 1)[1]  # the import's own error


def test_the_extras_require_the_minimums_the_messages_name(repo: Path) -> None:
    """pyproject.toml's extras ``celery``, ``rq`` and ``dramatiq`` (read as text: 3.10 has no
    tomllib) require the minimums the import errors give, and the dev extra the same."""
    text = (repo / "pyproject.toml").read_text()
    for framework, minimum in MINIMUMS.items():
        extra = re.search(rf'^{framework} = \["{framework}>=([^"]+)"\]$', text, re.M)
        assert extra is not None, framework
        assert extra.group(1) == minimum
        dev = re.search(rf'^\s*"{framework}(?:\[\w+\])?>=([^"]+)",$', text, re.M)
        assert dev is not None, framework
        assert dev.group(1) == minimum
