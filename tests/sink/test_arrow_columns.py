"""to_arrow() has the JobRecord columns, the same from a local and a remote store: times as
tz-aware UTC timestamps (they were naive, so comparing one with a record's time raised
TypeError), metadata and attributes as JSON text of the records' dicts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from chaperone_otel import semconv as sc
from chaperone_otel.sink import JobRecord, open_sink
from chaperone_otel.sink._remote import RemoteSink
from chaperone_otel.sink._server import SinkServer
from tests.sink.store_factory import T0, lifecycle, record
from tests.stores import empty_store

UTC = pa.timestamp("us", tz="UTC")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkServer]:
    path = empty_store(tmp_path_factory.mktemp("arrow") / "jobs.duckdb")
    srv = SinkServer(str(path), port=0, advertise=False).start()
    try:
        user = {sc.ATTR_USER_PREFIX + "tenant": "acme"}
        assert srv.writer.submit([
            *lifecycle("done", start=T0, **user),
            *lifecycle("failed", start=T0 + 60, status="failed"),
            record(run_id="live", ts=T0 + 200, started_at=T0 + 100,
                   **{sc.ATTR_METADATA: json.dumps({"batch": 2, "file": "f2.csv"}),
                      sc.ATTR_JOB_TIMEOUT_AT: T0 + 900, sc.ATTR_JOB_STUCK_SINCE: T0 + 150}),
        ])
        assert srv.writer.flush(30)
        yield srv
    finally:
        srv.stop(15)


def _columns(table: Any) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in table.schema]


@pytest.mark.parametrize("where", ["local", "remote"])
def test_arrow_times_are_utc_and_equal_the_records(server: SinkServer, where: str) -> None:
    sink = open_sink(server.path) if where == "local" else RemoteSink(server.url)
    try:
        query = sink.jobs.at(T0 + 300).order_by("id")
        table, records = query.to_arrow(), query.all()
    finally:
        sink.close()
    times = {f.name for f in table.schema if pa.types.is_timestamp(f.type)}
    assert times == JobRecord.TIME_FIELDS
    assert {str(table.schema.field(n).type) for n in times} == {str(UTC)}
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [r.id for r in records] == ["done", "failed", "live"]
    compared = 0
    for row, rec in zip(rows, records, strict=True):
        for name in times:
            assert row[name] == getattr(rec, name), (rec.id, name)  # aware == aware
            compared += row[name] is not None
        for name in ("metadata", "attributes"):
            assert pa.types.is_string(table.schema.field(name).type)
            assert json.loads(row[name] or "{}") == getattr(rec, name), (rec.id, name)
    assert compared >= 12
    assert records[2].metadata == {"batch": 2, "file": "f2.csv"}
    assert records[0].attributes == {"tenant": "acme"}


def test_a_remote_store_gives_the_local_schema(server: SinkServer) -> None:
    with open_sink(server.path) as local:
        expected = _columns(local.jobs.to_arrow())
    remote = RemoteSink(server.url)
    try:
        assert _columns(remote.jobs.to_arrow()) == expected
        assert _columns(remote.jobs.named("nope").to_arrow()) == expected  # no rows
    finally:
        remote.close()
