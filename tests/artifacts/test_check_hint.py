"""`python -m chaperone_otel.artifacts --check`: the command it prints for a stale file is
one that rewrites it, the same options included (a pip user's `--root`, `--source` and
`--runbook-base`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from chaperone_otel.artifacts.__main__ import main


def test_the_printed_command_rewrites_what_check_found_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, it printed `run: python -m chaperone_otel.artifacts` whatever the options:
    run as printed, it wrote the defaults into the current directory and the files under
    `--root` stayed stale."""
    root = tmp_path / "chaperone ops"  # a space: the command must quote it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    options = ["--root", str(root), "--source", "sink",
               "--runbook-base", "https://wiki.example.internal/chaperone/operations.md"]
    assert main(options) == 0
    (root / "dashboards" / "chaperone-sink.json").unlink()
    capsys.readouterr()

    assert main([*options, "--check"]) == 1
    err = capsys.readouterr().err
    hint = re.search(r"^stale: dashboards/chaperone-sink\.json \(run: (.+)\)$", err, re.M)
    assert hint, err
    words = shlex.split(hint.group(1))
    assert words[:3] == ["python", "-m", "chaperone_otel.artifacts"], words

    assert main(words[3:]) == 0  # what the user is told to run
    assert main([*options, "--check"]) == 0
    assert list(elsewhere.iterdir()) == []  # nothing written where the user stood


def test_without_options_the_command_is_the_bare_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a checkout (the root is the current directory), the hint stays the plain command."""
    monkeypatch.chdir(tmp_path)
    assert main(["--check"]) == 1
    assert "(run: python -m chaperone_otel.artifacts)\n" in capsys.readouterr().err
