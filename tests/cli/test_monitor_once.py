"""``monitor --once`` prints one frame and exits (review of the CLI): its last line said
"refresh every 1s · Ctrl-C to quit" although nothing refreshes and there is nothing to quit."""

from __future__ import annotations

from rich.console import Console

from chaperone_otel.cli._monitor import Frame, render_frame
from tests.cli._cli_helpers import Recorded, invoke


def test_monitor_once_has_no_refresh_footer(recorded_store: Recorded) -> None:
    result = invoke("monitor", "--once", "--db", str(recorded_store.path))
    assert result.exit_code == 0, result.output
    assert "recently finished" in result.stdout  # the frame itself is there
    assert "refresh every" not in result.stdout
    assert "Ctrl-C" not in result.stdout


def test_the_live_view_keeps_its_footer() -> None:
    console = Console(width=120, record=True, color_system=None)
    console.print(render_frame(Frame(), title="t", interval=2))
    assert console.export_text().splitlines()[-1].strip() == "refresh every 2s · Ctrl-C to quit"
