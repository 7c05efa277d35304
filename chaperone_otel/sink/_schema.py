"""The job store's DuckDB schema: tables, derived-health views and ordered migrations.

Every time is a UTC ``TIMESTAMP`` (no time zone): DuckDB's ``now()`` is ``TIMESTAMPTZ`` and
comparing it with a ``TIMESTAMP`` column casts the column and stops filter push-down (DESIGN
§9), so the query layer compares like with like — the health rules work in epoch seconds
(``epoch(col)``) against a bound ``$now``, and time scopes bind naive UTC timestamps.

There is deliberately no index: a DuckDB ART index helps point look-ups only, inflates the file
(~2.7x for a ``job_id`` index over 10 M rows) and slows the writer's upserts, while zone maps
already prune the time-ordered scans the scopes do.

A file remembers its version in ``schema_version``. Opening applies the missing migrations in
order (writable opens only); a file from a *newer* chaperone-otel raises
:class:`~chaperone_otel.exceptions.SchemaVersionError` instead of guessing.

Example::

    con = duckdb.connect("jobs.duckdb")
    migrate(con)               # creates or upgrades, then (re)creates the views
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone
from typing import Any, Final

from .._health import DEFAULT_POLICY, HealthPolicy, rules
from ..exceptions import SchemaVersionError, SinkError

SCHEMA_VERSION: Final = 1
"""The schema version this code writes and reads."""

HEARTBEATS_PER_RUN: Final = 1000
"""Default bound of stored heartbeat rows per run: the latest N are kept."""

TERMINAL_STATUSES: Final = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Column:
    """One column of the ``jobs`` table.

    Attributes:
        name: column name.
        sql_type: DuckDB type.
        kind: how an upsert merges it: ``state`` (the newest record wins), ``sticky`` (once
            set it stays: ids, end time, error), ``key`` or ``internal`` (writer bookkeeping).
    """

    name: str
    sql_type: str
    kind: str = "state"

    @property
    def is_time(self) -> bool:
        return self.sql_type == "TIMESTAMP"


JOB_COLUMNS: Final = (
    Column("run_id", "VARCHAR NOT NULL", "key"),
    Column("attempt", "INTEGER NOT NULL", "key"),
    Column("seq", "BIGINT", "internal"),
    Column("name", "VARCHAR"),
    Column("queue", "VARCHAR"),
    Column("status", "VARCHAR"),
    Column("reported_health", "VARCHAR"),
    Column("reported_stuck", "BOOLEAN"),
    Column("host", "VARCHAR"),
    Column("pid", "INTEGER"),
    Column("service_name", "VARCHAR"),
    Column("service_instance_id", "VARCHAR"),
    Column("started_at", "TIMESTAMP"),
    Column("finished_at", "TIMESTAMP", "sticky"),
    Column("duration", "DOUBLE", "sticky"),
    Column("timeout", "DOUBLE"),
    Column("timeout_at", "TIMESTAMP"),
    Column("stall_timeout", "DOUBLE"),
    Column("heartbeat_interval", "DOUBLE"),
    Column("heartbeat_count", "BIGINT"),
    Column("last_heartbeat_at", "TIMESTAMP"),
    Column("last_seen_at", "TIMESTAMP", "internal"),
    Column("progress", "DOUBLE"),
    Column("current", "DOUBLE"),
    Column("total", "DOUBLE"),
    Column("phase", "VARCHAR"),
    Column("rate", "DOUBLE"),
    Column("eta", "DOUBLE"),
    Column("progress_updated_at", "TIMESTAMP"),
    Column("memory_bytes", "BIGINT"),
    Column("memory_peak_bytes", "BIGINT"),
    Column("cpu_percent", "DOUBLE"),
    Column("open_fds", "INTEGER"),
    Column("memory_limit_bytes", "BIGINT"),
    Column("cpu_limit_percent", "DOUBLE"),
    Column("fd_limit", "INTEGER"),
    Column("limit_policy", "VARCHAR"),
    Column("violation_count", "INTEGER"),
    Column("error_type", "VARCHAR", "sticky"),
    Column("error_message", "VARCHAR", "sticky"),
    Column("error_trace", "VARCHAR", "sticky"),
    Column("trace_id", "VARCHAR", "sticky"),
    Column("span_id", "VARCHAR", "sticky"),
    Column("metadata", "VARCHAR"),
    Column("attributes", "VARCHAR"),
    Column("span_seen", "BOOLEAN", "internal"),
    Column("heartbeat_rows", "INTEGER", "internal"),
    Column("ingested_at", "TIMESTAMP", "internal"),
)
"""The ``jobs`` table, one row per (run_id, attempt)."""

JOB_COLUMN_NAMES: Final = tuple(c.name for c in JOB_COLUMNS)

HEALTH_COLUMNS: Final = {
    "status": "status",
    "started_at": "epoch(started_at)",
    "last_heartbeat": "epoch(last_heartbeat_at)",
    "last_seen": "epoch(last_seen_at)",
    "heartbeat_interval": "heartbeat_interval",
    "timeout_at": "epoch(timeout_at)",
    "stall_deadline": "(epoch(progress_updated_at) + stall_timeout)",
    "memory": "memory_bytes",
    "memory_limit": "memory_limit_bytes",
    "cpu": "cpu_percent",
    "cpu_limit": "cpu_limit_percent",
    "fds": "open_fds",
    "fd_limit": "fd_limit",
    "violation_count": "violation_count",
}
"""How each health-rule signal is spelled over the ``jobs`` table, in epoch seconds."""


def health_case(policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """SQL ``CASE`` giving the verdict of :meth:`Rules.health` (``$now`` unbound)."""
    r = rules(policy)
    return (
        f"CASE WHEN COALESCE({r.unhealthy.sql(HEALTH_COLUMNS)}, FALSE) THEN 'unhealthy' "
        f"WHEN COALESCE({r.degraded.sql(HEALTH_COLUMNS)}, FALSE) THEN 'degraded' "
        f"WHEN COALESCE({r.healthy.sql(HEALTH_COLUMNS)}, FALSE) THEN 'healthy' "
        "ELSE 'unknown' END"
    )


def predicate(name: str, policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """A health predicate (``stuck``, ``lost`` …) as a NULL-safe SQL boolean (``$now`` unbound)."""
    return f"COALESCE({rules(policy).by_name(name).sql(HEALTH_COLUMNS)}, FALSE)"


def _create_tables() -> list[str]:
    jobs = ",\n  ".join(f"{c.name} {c.sql_type}" for c in JOB_COLUMNS)
    return [
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL, description VARCHAR)",
        f"CREATE TABLE IF NOT EXISTS jobs (\n  {jobs}\n)",
        """CREATE TABLE IF NOT EXISTS heartbeats (
  run_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, seq BIGINT NOT NULL,
  recorded_at TIMESTAMP NOT NULL, calls BIGINT, kind VARCHAR, count BIGINT, progress DOUBLE,
  current DOUBLE, total DOUBLE, phase VARCHAR, memory_bytes BIGINT, cpu_percent DOUBLE,
  metadata VARCHAR
)""",
        """CREATE TABLE IF NOT EXISTS job_errors (
  run_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, recorded_at TIMESTAMP, type VARCHAR,
  message VARCHAR, trace VARCHAR, trace_id VARCHAR, span_id VARCHAR
)""",
        """CREATE TABLE IF NOT EXISTS resource_violations (
  run_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, seq BIGINT NOT NULL, recorded_at TIMESTAMP,
  type VARCHAR, limit_value DOUBLE, actual DOUBLE, policy VARCHAR
)""",
    ]


@dataclass(frozen=True)
class Migration:
    """One ordered step: applied once, in a transaction, recorded in ``schema_version``."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: Final = (
    Migration(1, "jobs, heartbeats, job_errors, resource_violations", tuple(_create_tables())),
)
"""Every migration, in order; the last one's version is :data:`SCHEMA_VERSION`."""


def view_statements(policy: HealthPolicy = DEFAULT_POLICY) -> list[str]:
    """Derived-health views for raw SQL users, rendered from the one rule definition.

    Views cannot take parameters, so here ``$now`` is the wall clock in epoch seconds
    (``epoch(current_timestamp)``: a number compared with numbers, so the TIMESTAMPTZ trap
    does not apply). The query API binds ``$now`` instead and never uses these views.
    """
    now = "epoch(current_timestamp)"

    def render(sql: str) -> str:
        # '$now' is a token of the internally rendered rule text, never user input.
        return sql.replace("$now", now)

    return [
        "CREATE OR REPLACE VIEW jobs_health AS SELECT *, "
        f"{render(health_case(policy))} AS health, "
        f"{render(predicate('stuck', policy))} AS stuck, "
        f"{render(predicate('lost', policy))} AS lost, "
        f"{render(predicate('stalled', policy))} AS stalled, "
        f"{render(predicate('overtime', policy))} AS overtime, "
        f"({now} - epoch(last_heartbeat_at)) AS heartbeat_age, "
        f"({now} - epoch(last_seen_at)) AS silence "
        "FROM jobs",
        "CREATE OR REPLACE VIEW problem_runs AS SELECT * FROM jobs_health "
        "WHERE status = 'running' AND (health <> 'healthy' OR stuck OR lost)",
    ]


def current_version(con: Any) -> int:
    """The file's schema version (0 for an empty database)."""
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()
    if not found or not found[0]:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def check_version(con: Any, path: str) -> int:
    """Raise :class:`SchemaVersionError` if ``path`` is from a newer chaperone-otel."""
    version = current_version(con)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has job-store schema version {version}, but this chaperone-otel only "
            f"knows up to version {SCHEMA_VERSION}: it was written by a newer release. "
            "Upgrade chaperone-otel (pip install -U chaperone-otel) to read it, or point "
            "the sink at another file."
        )
    return version


def migrate(con: Any, path: str, policy: HealthPolicy = DEFAULT_POLICY) -> int:
    """Apply missing migrations in order, then (re)create the views. Returns the version."""
    version = check_version(con, path)
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in migration.statements:
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_version VALUES (?, CAST(? AS TIMESTAMP), ?)",
                [migration.version, _utc_now_text(), migration.description],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        version = migration.version
    for statement in view_statements(policy):
        con.execute(statement)
    return version


def require_current(con: Any, path: str) -> None:
    """For read-only opens: the file must already be at :data:`SCHEMA_VERSION`."""
    version = check_version(con, path)
    if version < SCHEMA_VERSION:
        if version == 0:
            raise SinkError(f"{path} is not a chaperone-otel job store (no schema_version table)")
        raise SinkError(
            f"{path} has schema version {version} (current: {SCHEMA_VERSION}); open it once "
            "writable to migrate it: open_sink(path, read_only=False)"
        )


def _utc_now_text() -> str:
    from datetime import datetime  # noqa: PLC0415

    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
