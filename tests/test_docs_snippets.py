"""The documentation's Python blocks that a reader can copy and run as they are do run.

Every fenced ``python`` block of the user documentation (README.md and docs/*.md but the
maintainers' pages) is listed here, by its page and a marker (its first line, an inline
comment left out): either in :data:`RUNS`, run as the page has it (blocks that continue an
earlier block of the page run after it, in the same directory), or in :data:`NOT_RUN`, with
why it cannot run on its own (a fragment, placeholders of the reader's, a worker). A listed
block that is gone or whose first line changed, and a new block listed nowhere, fail the
test, so a block that runs today cannot silently drop out.

Each run is a fresh interpreter with none of the developer's ``OTEL_*``/``CHAPERONE_OTEL_*``
settings, in ``tmp_path`` (the blocks' ``jobs.duckdb`` is written there), bounded in time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.processes import run_python

MAINTAINERS = {"architecture.md", "decisions.md", "performance.md"}
"""docs/ pages for maintainers: their blocks are not a user's to copy."""

PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")
                              if p.name not in MAINTAINERS)]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of its first line, 1-based
    code: str

    @property
    def marker(self) -> str:
        """Its first non-blank line, stripped, without an inline comment (code, then two
        spaces or more and ``#``); a line that is a comment is kept whole."""
        first = next(line.strip() for line in self.code.splitlines() if line.strip())
        return first if first.startswith("#") else re.split(r"\s{2,}#", first)[0]


def python_blocks(page: str) -> list[Block]:
    """The page's fenced ``python`` blocks, each dedented by its fence's indentation (a
    block in a list item reads as the page renders it)."""
    lines = (REPO / page).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, start = fence["indent"], i + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{page}:{i + 1}: a python block that is never closed"
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                for line in lines[start:end]]
        blocks.append(Block(page, start + 1, "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def find(page: str, marker: str) -> Block:
    """The one block of ``page`` whose marker is ``marker``; fails when there is none (the
    block is gone, or its first line changed: update this list) or several."""
    found = [b for b in python_blocks(page) if b.marker == marker]
    assert len(found) == 1, (
        f"{page}: {len(found)} python blocks start with {marker!r} (expected 1): a listed "
        "block was removed or its first line changed; update tests/test_docs_snippets.py"
    )
    return found[0]


@dataclass(frozen=True)
class Step:
    """One interpreter: these blocks of one page, concatenated (a block that continues the
    one before it, as the page has it), then ``check`` (the outcome the page promises)."""

    page: str
    markers: tuple[str, ...]
    replace: dict[str, str] = field(default_factory=dict)
    """What must change to run here, each ``old`` required in the blocks: a fixed port."""
    check: str = ""

    def script(self) -> str:
        code = "".join(find(self.page, m).code for m in self.markers)
        for old, new in self.replace.items():
            assert old in code, f"{self.page}: {old!r} is no longer in {self.markers}"
            code = code.replace(old, new)
        return code + self.check


QUICKSTART_OUTCOME = """
from chaperone_otel import open_sink as _open
with _open("jobs.duckdb") as _sink:
    _parent = _sink.jobs.named("nightly.rebuild").first()
    assert (_parent.status, _parent.progress, _parent.phase) == ("completed", 100.0, "process")
    (_child,) = _sink.jobs.children_of(_parent.id).all()
    assert _child.name.endswith("import_file"), _child.name
    assert (_child.status, _child.progress) == ("completed", 100.0)
"""

README_OUTCOME = """
(_run,) = jobs.named("import_orders").all()
assert (_run.status, _run.progress, _run.total) == ("completed", 100.0, 100_000), _run
"""

SIGTERM_OUTCOME = """
import os, time
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    raise AssertionError("SIGTERM did not raise KeyboardInterrupt")
except KeyboardInterrupt:
    pass
"""

SCHEDULE_OUTCOME = """
with open_sink("jobs.duckdb") as _sink:
    ((_name, _cron, _tz, _grace),) = _sink.sql(
        "SELECT name, cron, timezone, grace FROM schedules").rows
    assert (_name, _cron, _tz, _grace) == ("nightly-import", "0 2 * * *", "Europe/Paris", 900.0)
"""

RUNS: dict[str, tuple[Step, ...]] = {
    "readme": (
        Step("README.md", ("import chaperone_otel as chaperone",),
             replace={"prometheus_port=9464": "prometheus_port=0"}, check=README_OUTCOME),
    ),
    "quickstart": (
        # "Your own jobs": /metrics on a free port rather than 9464, which may be taken.
        Step("docs/quickstart.md", ("import time",),
             replace={"prometheus_port=9464": "prometheus_port=0"}),
        Step("docs/quickstart.md", ("from chaperone_otel import open_sink",),  # "Query the store"
             check=QUICKSTART_OUTCOME),
        Step("docs/querying.md", ("from chaperone_otel.sink import open_sink",)),  # that store
    ),
    "sigterm-as-ctrl-c": (
        Step("docs/concepts.md", ("import signal",), check=SIGTERM_OUTCOME),
    ),
    "schedules": (
        Step("docs/schedules.md", ("import chaperone_otel as chaperone",)),  # declares
        Step("docs/schedules.md", ("from chaperone_otel import open_sink",  # queries, forgets
                                   'with open_sink("jobs.duckdb", read_only=False) as sink:'),
             check=SCHEDULE_OUTCOME),
    ),
}
"""Blocks that run as written, in order, per scenario."""

NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/concepts.md", '@supervised(queue="etl", heartbeat_interval=30, timeout="1h", '
                         'stall_timeout="5m",'):
        "a fragment: no imports; calls fetch() and transform()",
    ("docs/concepts.md", "@supervised"): "a fragment: no imports; import_file() is the reader's",
    ("docs/concepts.md", 'with supervised("nightly.rebuild") as run:'):
        "a fragment: no imports; import_file() and path are the reader's",
    ("docs/concepts.md", "def test_import(chaperone):"):
        "a pytest test of the reader's ProcessDataset",
    ("docs/concepts.md", "def test_cancelled_over_memory(chaperone, chaperone_clock):"):
        "a pytest test, its imports left out (tests/test_testing_resources.py tests the same)",
    ("docs/integrations.md", "# proj/tasks.py  (the module named by `celery -A proj.tasks "
                             "worker`)"):
        "a Celery app: a worker and Redis (tests/integrations/test_docs_setups.py runs it)",
    ("docs/integrations.md", '@app.task(chaperone_lease="heartbeat", '
                             "chaperone_heartbeat_interval=30)"): "a Celery task",
    ("docs/integrations.md", "sink.jobs.with_id(task_id).all()"):
        "a fragment: a Celery task's id",
    ("docs/integrations.md", "from celery.signals import worker_process_init"):
        "a Celery worker's signal",
    ("docs/integrations.md", "# proj/worker.py  (the worker class: `rq worker -w "
                             "proj.worker.Worker`)"):
        "an RQ worker and Redis (tests/integrations/test_docs_setups.py runs it)",
    ("docs/integrations.md", "# proj/jobs.py"):
        "an RQ job: load() and save() are the reader's (tests/integrations/test_docs_setups.py "
        "runs it with its own)",
    ("docs/integrations.md", "from redis import Redis"):
        "enqueues to Redis for an RQ worker (tests/integrations/test_docs_setups.py runs it)",
    ("docs/integrations.md", "# proj/tasks.py  (`dramatiq proj.tasks`)"):
        "a Dramatiq worker and Redis (tests/integrations/test_docs_setups.py runs it)",
    ("docs/querying.md", "job = sink.job(supervision_id)"):
        "a fragment: sink and supervision_id are the reader's",
    ("docs/querying.md", 'result = sink.sql("SELECT * FROM heartbeats")'):
        "a fragment: sink and query are the reader's",
    ("docs/schedules.md", "# cron_config.py   (rq cron cron_config.py --url "
                          "redis://localhost:6379/0)"): "an `rq cron` config and Redis",
    ("docs/sink-server.md", "from chaperone_otel.sink._server import serve, SinkServer"):
        "a signature sketch: path and options are the reader's",
    ("docs/sink-server.md", "from chaperone_otel.sink._api import create_query_app, "
                            "query_routes"): "a signature sketch: the sink is the reader's",
}
"""Blocks that do not run on their own, and why."""


def test_every_python_block_is_listed_once() -> None:
    """Each python block of the user docs is run or said not to run, and every entry names
    a block that is there."""
    listed = [(s.page, m) for steps in RUNS.values() for s in steps for m in s.markers]
    listed += list(NOT_RUN)
    assert len(listed) == len(set(listed)), "a block is listed twice"
    for page, marker in listed:
        find(page, marker)
    unlisted = [f"{b.page}:{b.line}: {b.marker}" for page in PAGES for b in python_blocks(page)
                if (b.page, b.marker) not in set(listed)]
    assert not unlisted, (
        "python blocks neither run nor listed as not runnable (add them to RUNS or NOT_RUN): "
        + "; ".join(unlisted)
    )


@pytest.mark.parametrize("scenario", sorted(RUNS))
def test_the_block_runs_as_written(scenario: str, tmp_path: Path) -> None:
    """Each step in a fresh interpreter in ``tmp_path``: it exits 0 and nothing raised in
    a thread either."""
    for step in RUNS[scenario]:
        proc = run_python(step.script(), timeout=60, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO)})
        assert "Traceback" not in proc.stderr, f"{step.page} {step.markers}: {proc.stderr}"
