"""The run-field table (``chaperone_otel._fields``) is the one source of a run's fields.

Staging, the ``jobs`` table, the SELECT list, ``JobRecord`` and the runtime's record
attributes must all follow it, and adding a field must be one row plus a migration.
"""

from __future__ import annotations

import dataclasses

import duckdb
import pyarrow as pa
import pytest

from chaperone_otel import report_progress, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._fields import (
    LISTED,
    RUN_FIELDS,
    STATUSES,
    TERMINAL_STATUSES,
    Kind,
    RunField,
    record_attributes,
    record_fields,
)
from chaperone_otel._health import DEFAULT_POLICY
from chaperone_otel.cli._render import JOB_COLUMNS as CLI_COLUMNS
from chaperone_otel.sink import JobRecord
from chaperone_otel.sink._records import JOB_ATTRIBUTES, job_attributes, stage
from chaperone_otel.sink._results import select_list
from chaperone_otel.sink._schema import (
    JOB_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    job_columns,
    migrate,
)
from chaperone_otel.testing import FakeClock, capture
from tests.sink.store_factory import T0, record

# Attributes of one kind of event, not of the run's state (the sink keeps them per event).
EVENT_ATTRIBUTES = {
    sc.ATTR_HEARTBEAT_CALLS,
    sc.ATTR_HEARTBEAT_KIND,
    sc.ATTR_LIMIT_TYPE,
    sc.ATTR_LIMIT_VALUE,
    sc.ATTR_LIMIT_ACTUAL,
    sc.ATTR_HEALTH_PREVIOUS,
}
# Attributes of a run that another record states, never the run's own (pending_run()).
OTHER_RECORDS = {sc.ATTR_JOB_SCHEDULED_AT}


def test_staged_types_are_the_column_types():
    """Each staged column's Arrow type lands in DuckDB as exactly its column's SQL type
    (times are staged as epoch seconds and converted by the writer): int32 is INTEGER."""
    columns = {c.name: c.sql_type.removesuffix(" NOT NULL") for c in JOB_COLUMNS}
    con = duckdb.connect()
    for name, _attribute, arrow_type, is_time in JOB_ATTRIBUTES:
        staged = pa.table({name: pa.array([], type=arrow_type)})  # noqa: F841 - DuckDB reads it
        landed = str(con.sql("SELECT * FROM staged").types[0])
        expected = "DOUBLE" if is_time else columns[name]
        assert landed == expected, f"{name}: staged as {arrow_type} ({landed}), column {expected}"
        assert is_time == (columns[name] == "TIMESTAMP")


def test_job_record_shows_exactly_the_record_fields():
    """JobRecord (typed for type checkers) declares exactly the table's record fields."""
    declared = {f.name for f in dataclasses.fields(JobRecord) if not f.name.startswith("_")}
    assert declared == {f.record_name for f in record_fields()}
    times = {f.record_name for f in record_fields() if f.kind is Kind.TIME}
    assert times == JobRecord.TIME_FIELDS


def test_statuses_and_listings_come_from_the_table():
    """The status tuple is written once; the CLI's listed columns are record fields."""
    assert STATUSES[2:] == TERMINAL_STATUSES
    assert tuple(CLI_COLUMNS) == LISTED
    assert set(LISTED) <= {f.record_name for f in record_fields()}


def test_a_supervised_run_carries_exactly_the_table_attributes():
    """The state attributes a real run's records carry (Supervision.record_attributes) are
    exactly the table's record attributes: none the store would drop, none it lacks."""
    clock = FakeClock()
    with capture(clock=clock) as cap:

        @supervised(
            name="fields.all",
            queue="q",
            timeout=600,
            stall_timeout=300,
            memory_limit="64GiB",
            cpu_limit=100_000,
            fd_limit=1_000_000,
            heartbeat_interval=10,
            schedule="fields.schedule",
        )
        def job() -> None:
            report_progress(1, 10, {"k": "v"}, phase="load")
            cap.advance(5)  # samples are due by the fake clock: CPU at the next pass
            report_progress(5, 10)
            cap.advance(5)
            cap.advance(31)  # silent for over 3 intervals: stuck (its history is recorded)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError), supervised("fields.parent"):  # the parent link
            job()
        seen = set()
        for r in cap.records:
            seen |= {k for k in r.attributes if not k.startswith(sc.ATTR_USER_PREFIX)}
    # Only a framework's start_run() knows the slot a run serves (scheduled_for).
    assert seen - EVENT_ATTRIBUTES == record_attributes() - OTHER_RECORDS - {
        sc.ATTR_SCHEDULE_SCHEDULED_FOR}


# --- adding a field ----------------------------------------------------------------------

GPU = RunField("gpu_percent", Kind.FLOAT, "chaperone.job.gpu.percent", doc="GPU, %.")
WITH_GPU = (*RUN_FIELDS, GPU)
NEXT = SCHEMA_VERSION + 1
ADD_GPU = Migration.add_columns(NEXT, "GPU usage", "gpu_percent", fields=WITH_GPU)


@dataclasses.dataclass(frozen=True)
class GpuRecord(JobRecord):
    """What JobRecord would be with the new field declared."""

    gpu_percent: float | None = None


def test_a_new_field_is_one_row_and_a_migration(tmp_path):
    """One new row (plus its migration) reaches the staging, the SQL table of an existing
    store (through the migration) and the record a query returns."""
    con = duckdb.connect(str(tmp_path / "jobs.duckdb"))
    assert migrate(con, "jobs.duckdb") == SCHEMA_VERSION  # a store before the field existed
    staged = stage(
        [record(run_id="gpu-run", ts=T0, **{GPU.attribute: 87.5})],
        attributes=job_attributes(WITH_GPU),
    ).logs
    assert staged is not None
    assert staged.schema.field("gpu_percent").type == pa.float64()
    assert staged.column("gpu_percent").to_pylist() == [87.5]

    assert migrate(con, "jobs.duckdb", migrations=(*MIGRATIONS, ADD_GPU)) == NEXT
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'jobs'").fetchall())
    assert types["gpu_percent"] == "DOUBLE"
    assert [c.name for c in job_columns((*MIGRATIONS, ADD_GPU), WITH_GPU)][-1] == "gpu_percent"

    con.register("staged", staged)
    con.execute(
        "INSERT INTO jobs (run_id, attempt, name, status, started_at, gpu_percent) "
        "SELECT run_id, attempt, name, status, make_timestamp(CAST(started_at * 1e6 "
        "AS BIGINT)), gpu_percent FROM staged"
    )
    text = f"SELECT {select_list(DEFAULT_POLICY, record=GpuRecord, run_fields=WITH_GPU)} FROM jobs"
    cur = con.execute(text, {"now": T0})
    names = [d[0] for d in cur.description]
    row = dict(zip(names, cur.fetchone(), strict=True))
    got = GpuRecord.from_dict(row, run_fields=WITH_GPU)
    assert got.gpu_percent == 87.5
    assert got.id == "gpu-run"
    assert got.started_at is not None
    assert got.started_at.tzinfo is not None


def test_a_field_without_a_migration_is_refused():
    """Forgetting the migration fails loudly, naming the field and the fix."""
    with pytest.raises(ValueError, match=rf"gpu_percent.*Migration\.add_columns\({NEXT}"):
        job_columns(MIGRATIONS, WITH_GPU)
