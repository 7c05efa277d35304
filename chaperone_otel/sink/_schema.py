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

The views carry a fingerprint of their own SQL in their DuckDB comment
(``chaperone-otel views <sha256 prefix>``): a writable open of a current store whose views
already carry the fingerprint of what this code would create leaves them alone (re-creating
``jobs_health`` and the views over it costs ~15 ms of binding on every open); views that are
missing, renamed, commented otherwise or rendered with another policy are re-created.

Example::

    con = duckdb.connect("jobs.duckdb")
    migrate(con)               # creates or upgrades, then (re)creates stale views
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Final, get_args

from .. import _fields
from .._fields import RUN_FIELDS, Kind, RunField, field_named, signal_fields
from .._health import DEFAULT_POLICY, Health, HealthPolicy, rules
from ..exceptions import SchemaVersionError, SinkError
from ._schedule_sql import view_statements as schedule_views
from ._settled import (
    SETTLED_COLUMN,
    health_by_status,
    scope_parts,
    settle_case,
    settled_usable,
)

HEARTBEATS_PER_RUN: Final = 1000
"""Default bound of stored heartbeat rows per run: the latest N are kept."""

TERMINAL_STATUSES: Final = _fields.TERMINAL_STATUSES
"""Statuses of an ended run (the writer's merge keeps them); defined in ``_fields``."""


SQL_TYPES: Final[Mapping[Kind, str]] = {
    Kind.STR: "VARCHAR",
    Kind.BOOL: "BOOLEAN",
    Kind.INT32: "INTEGER",
    Kind.INT64: "BIGINT",
    Kind.FLOAT: "DOUBLE",
    Kind.TIME: "TIMESTAMP",
    Kind.JSON: "VARCHAR",
}
"""The DuckDB type of each field kind (``_records`` maps the same kinds to Arrow types)."""


@dataclass(frozen=True)
class Column:
    """One column of the ``jobs`` table, derived from its :class:`~chaperone_otel._fields.RunField`.

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


def column_of(f: RunField) -> Column:
    """The ``jobs`` column of a stored run field."""
    return Column(f.name, SQL_TYPES[f.kind] + (" NOT NULL" if f.required else ""), f.merge)


@dataclass(frozen=True)
class Migration:
    """One ordered step: applied once, in a transaction, recorded in ``schema_version``.

    ``columns`` names the ``jobs`` columns the step adds (in order), so the table's columns
    follow from the migrations and every stored run field is checked to have one.
    """

    version: int
    description: str
    statements: tuple[str, ...]
    columns: tuple[str, ...] = ()

    @classmethod
    def add_columns(
        cls,
        version: int,
        description: str,
        *names: str,
        fields: tuple[RunField, ...] = RUN_FIELDS,
    ) -> Migration:
        """A step adding run fields (rows of :data:`~chaperone_otel._fields.RUN_FIELDS`) as
        ``jobs`` columns: the usual migration for a new field.

        Example::

            Migration.add_columns(2, "GPU usage", "gpu_percent")
        """
        statements = []
        for name in names:
            f = field_named(name, fields)
            # ADD COLUMN cannot be NOT NULL on a table with rows; a new field is optional.
            statements.append(f"ALTER TABLE jobs ADD COLUMN {f.name} {SQL_TYPES[f.kind]}")
        return cls(version, description, tuple(statements), tuple(names))


V1_JOB_COLUMNS: Final = (
    "run_id",
    "attempt",
    "seq",
    "name",
    "queue",
    "status",
    "reported_health",
    "reported_stuck",
    "host",
    "pid",
    "service_name",
    "service_instance_id",
    "started_at",
    "finished_at",
    "duration",
    "timeout",
    "timeout_at",
    "stall_timeout",
    "heartbeat_interval",
    "heartbeat_count",
    "last_heartbeat_at",
    "last_seen_at",
    "progress",
    "current",
    "total",
    "phase",
    "rate",
    "eta",
    "progress_updated_at",
    "memory_bytes",
    "memory_peak_bytes",
    "cpu_percent",
    "open_fds",
    "memory_limit_bytes",
    "cpu_limit_percent",
    "fd_limit",
    "limit_policy",
    "violation_count",
    "error_type",
    "error_message",
    "error_trace",
    "trace_id",
    "span_id",
    "metadata",
    "attributes",
    "span_seen",
    "heartbeat_rows",
    "ingested_at",
)
"""The ``jobs`` columns a version-1 store file has (migration 1's table: history, frozen)."""


HEALTH_COLUMNS: Final[Mapping[str, str]] = {
    **{
        signal: f"epoch({f.name})" if f.kind is Kind.TIME else f.name
        for signal, f in signal_fields().items()
    },
    # the one composite signal: when a stall budget runs out
    "stall_deadline": "(epoch(progress_updated_at) + stall_timeout)",
    # CPU the run can be charged with: a reading shared with other runs is no signal
    "cpu": "(CASE WHEN cpu_scope = 'shared' THEN NULL ELSE cpu_percent END)",
}
"""How each health-rule signal is spelled over the ``jobs`` table, in epoch seconds."""


def health_case(policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """SQL ``CASE`` giving the verdict of :meth:`Rules.health` (``$now`` unbound)."""
    return health_by_status(HEALTH_COLUMNS, policy)


def predicate(name: str, policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """A health predicate (``stuck``, ``lost`` …) as a NULL-safe SQL boolean (``$now`` unbound)."""
    return f"COALESCE({rules(policy).by_name(name).sql(HEALTH_COLUMNS)}, FALSE)"


VERDICT_TYPE: Final = "chaperone_verdict"
"""The ENUM type of ``settled_health``."""
HEALTHS: Final[tuple[str, ...]] = get_args(Health)
"""Every value of :data:`chaperone_otel._health.Health`, the ENUM's values."""

SETTLE_SQL: Final = settle_case(HEALTH_COLUMNS)
"""The ``settled_health`` of a row (issue 16): a finished run's verdict, NULL while it is
live; the writer stores it with every row it writes, the backfill with every old one."""


BACKFILL_SETTLED: Final = (
    f"UPDATE jobs SET {SETTLED_COLUMN} = {SETTLE_SQL} "
    f"WHERE status IN ({', '.join(repr(s) for s in TERMINAL_STATUSES)})"
)
"""Stores the settled verdict of every finished run already stored (migration 6)."""


def stored_health(policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """:func:`health_case`, reading a finished run's stored verdict instead of judging it."""
    if not settled_usable(policy, HEALTH_COLUMNS):
        return health_case(policy)
    return (
        f"CASE WHEN {SETTLED_COLUMN} IS NULL THEN {health_case(policy)} ELSE {SETTLED_COLUMN} END"
    )


def where_predicate(name: str, policy: HealthPolicy = DEFAULT_POLICY) -> str:
    """A health scope as a WHERE clause (``$now`` unbound): :func:`predicate`'s rows, cheaper
    (issue 16; see :func:`~._settled.scope_parts`)."""
    parts = scope_parts(name, HEALTH_COLUMNS, policy)
    if parts is None:
        return rules(policy).by_name(name).sql(HEALTH_COLUMNS)
    stored, live = parts
    return live if stored is None else f"({live} OR {stored})"


def settled_branches(name: str, policy: HealthPolicy = DEFAULT_POLICY) -> tuple[str, str] | None:
    """A verdict scope as two disjoint WHERE clauses, (finished runs by their stored verdict,
    the other runs by their status's residual rule), or None when ``name`` has no such split.

    ``count()`` runs them as two scans and adds the counts: one scan of both had to read the
    rule's fifteen columns for every row, the two read the one-byte verdict for the finished
    runs and the fifteen only where the pushed ``settled_health IS NULL`` leaves rows.
    """
    parts = scope_parts(name, HEALTH_COLUMNS, policy)
    if parts is None or parts[0] is None:
        return None
    return parts[0], parts[1]


def live_only(name: str, policy: HealthPolicy = DEFAULT_POLICY) -> bool:
    """True when scope ``name`` matches no finished run (``stuck``, ``degraded``,
    ``near_limit`` …: its stored-verdict part is empty), so it keeps a few live runs of a
    store that is mostly history."""
    parts = scope_parts(name, HEALTH_COLUMNS, policy)
    return parts is not None and parts[0] is None


def _create_tables() -> list[str]:
    jobs = ",\n  ".join(
        f"{c.name} {c.sql_type}" for c in (column_of(field_named(n)) for n in V1_JOB_COLUMNS)
    )
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


SCHEDULE_TABLES: Final = (
    # One row per schedule name: the newest declaration's definition. changed_at is when the
    # definition last changed (its slots start there); declared_at the latest declaration.
    """CREATE TABLE IF NOT EXISTS schedules (
  name VARCHAR NOT NULL, cron VARCHAR, "interval" DOUBLE, timezone VARCHAR NOT NULL,
  grace DOUBLE NOT NULL, max_runtime DOUBLE, failure_threshold INTEGER NOT NULL,
  declare_every DOUBLE, source VARCHAR, host VARCHAR, service_instance_id VARCHAR,
  first_declared_at TIMESTAMP NOT NULL, changed_at TIMESTAMP NOT NULL,
  declared_at TIMESTAMP NOT NULL
)""",
    # One row per slot that fell due (missed ones included): the run that fulfils it, if
    # any, and the definition it is judged by (a later re-declaration does not rewrite it).
    """CREATE TABLE IF NOT EXISTS schedule_slots (
  schedule VARCHAR NOT NULL, due_at TIMESTAMP NOT NULL, opens_at TIMESTAMP NOT NULL,
  grace DOUBLE NOT NULL, max_runtime DOUBLE, failure_threshold INTEGER NOT NULL,
  run_id VARCHAR, matched_at TIMESTAMP
)""",
    # One row per dispatch a scheduler recorded (Celery beat): sent, whether or not it ran.
    """CREATE TABLE IF NOT EXISTS schedule_dispatches (
  schedule VARCHAR NOT NULL, run_id VARCHAR, scheduled_for TIMESTAMP,
  dispatched_at TIMESTAMP NOT NULL
)""",
)
"""The schedule tables (issue 15); ``sink/_schedule_store.py`` writes and reads them."""

FORGOTTEN_SCHEDULES: Final = (
    # One row per schedule forgotten (its tombstone): a declaration or dispatch of it made
    # by forgotten_at is ignored when it arrives later; a newer declaration removes the row.
    "CREATE TABLE IF NOT EXISTS forgotten_schedules "
    "(name VARCHAR NOT NULL, forgotten_at TIMESTAMP NOT NULL)"
)
"""The tombstones of forgotten schedules (``sink/_schedule_store.py``)."""


def _job_totals_statements() -> list[str]:
    """The ``job_totals`` summary, filled from the runs already stored.

    One row per (name, queue, terminal status): ``finished`` counts runs the store saw end
    (a Prometheus counter: pruning never lowers it), ``stored`` those still in ``jobs``, and
    ``last_finished_at`` the latest end. The writer keeps it current in the same transaction
    as the runs (:mod:`._ingest`) and prune lowers ``stored``, so the fleet ``/metrics`` read a
    few rows instead of scanning every run ever stored.
    """
    terminal = ", ".join(f"'{s}'" for s in TERMINAL_STATUSES)
    return [
        "CREATE TABLE IF NOT EXISTS job_totals (name VARCHAR NOT NULL, queue VARCHAR NOT NULL, "
        "status VARCHAR NOT NULL, finished BIGINT NOT NULL, stored BIGINT NOT NULL, "
        "last_finished_at TIMESTAMP)",
        "INSERT INTO job_totals SELECT coalesce(name, ''), coalesce(queue, ''), status, "
        f"count(*), count(*), max(finished_at) FROM jobs WHERE status IN ({terminal}) "
        "GROUP BY ALL",
    ]


PRUNE_TOTALS: Final = (
    "MERGE INTO job_totals AS t USING (SELECT coalesce(name, '') AS name, "
    "coalesce(queue, '') AS queue, status, count(*) AS n FROM jobs SEMI JOIN chaperone_doomed d "
    "ON jobs.run_id = d.run_id AND jobs.attempt = d.attempt "
    "AND jobs.execution_id = d.execution_id "
    "WHERE status IN (" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ") GROUP BY ALL) "
    "AS p ON t.name = p.name AND t.queue = p.queue AND t.status = p.status "
    "WHEN MATCHED THEN UPDATE SET stored = t.stored - p.n"
)
"""Run by prune before it deletes the ``chaperone_doomed`` runs: ``stored`` follows."""


VERDICT_TOTALS: Final = "verdict_totals"
"""Stored runs per (name, queue, status, settled verdict): ``count()`` of a verdict scope
reads it for the finished runs (issue 16; kept by ``sink/_verdict_totals.py``)."""


def verdict_totals_statements() -> tuple[str, ...]:
    """The ``verdict_totals`` table, filled from the verdicts already stored. The key is
    ``job_totals``'s (a missing name or queue is ``''``) plus the verdict."""
    return (
        f"CREATE TABLE IF NOT EXISTS {VERDICT_TOTALS} (name VARCHAR NOT NULL, "
        f"queue VARCHAR NOT NULL, status VARCHAR NOT NULL, health {VERDICT_TYPE} NOT NULL, "
        "stored BIGINT NOT NULL)",
        f"INSERT INTO {VERDICT_TOTALS} SELECT coalesce(name, ''), coalesce(queue, ''), status, "
        f"{SETTLED_COLUMN}, count(*) FROM jobs WHERE {SETTLED_COLUMN} IS NOT NULL GROUP BY ALL",
    )


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "jobs, heartbeats, job_errors, resource_violations",
        tuple(_create_tables()),
        V1_JOB_COLUMNS,
    ),
    Migration.add_columns(
        2,
        "CPU scope, stuck history, parent run",
        "cpu_scope",
        "stuck_since",
        "stuck_seconds",
        "parent_run_id",
    ),
    Migration(
        3,
        "schedules: runs name their schedule and slot; schedules and their slots",
        (
            *Migration.add_columns(3, "", "schedule", "scheduled_for").statements,
            *SCHEDULE_TABLES,
        ),
        ("schedule", "scheduled_for"),
    ),
    Migration(
        4,
        "job_totals: ended runs by name, queue and status (fleet /metrics, issue 14)",
        tuple(_job_totals_statements()),
    ),
    Migration(
        5,
        "executions: a row per (run_id, attempt, execution_id), '' for rows stored before; "
        "the run's lease; a pending run's due time",
        (
            "ALTER TABLE jobs ADD COLUMN execution_id VARCHAR DEFAULT ''",
            "ALTER TABLE heartbeats ADD COLUMN execution_id VARCHAR DEFAULT ''",
            "ALTER TABLE job_errors ADD COLUMN execution_id VARCHAR DEFAULT ''",
            "ALTER TABLE resource_violations ADD COLUMN execution_id VARCHAR DEFAULT ''",
            "ALTER TABLE jobs ADD COLUMN lease VARCHAR",
            "ALTER TABLE jobs ADD COLUMN scheduled_at TIMESTAMP",
        ),
        ("execution_id", "lease", "scheduled_at"),
    ),
    Migration(
        6,
        "settled_health: a finished run's verdict, stored so scopes judge only live runs "
        "(issue 16); backfilled for the runs already stored",
        (
            # An ENUM (one byte, run-length encoded): its scans cost about half a VARCHAR's
            f"CREATE TYPE {VERDICT_TYPE} AS ENUM ({', '.join(repr(v) for v in HEALTHS)})",
            f"ALTER TABLE jobs ADD COLUMN {SETTLED_COLUMN} {VERDICT_TYPE}",
            BACKFILL_SETTLED,
        ),
        (SETTLED_COLUMN,),
    ),
    Migration(
        7,
        "verdict_totals: stored finished runs per name, queue, status and settled verdict, "
        "so a verdict scope's count() reads them instead of scanning (issue 16)",
        verdict_totals_statements(),
    ),
    Migration(
        8,
        "schedules.day_and: a cron schedule whose slots need both day fields to match "
        "(a Celery crontab), not either as in cron",
        ("ALTER TABLE schedules ADD COLUMN day_and BOOLEAN DEFAULT false",),
    ),
    Migration(
        9,
        "forgotten_schedules: when each schedule was forgotten, so a declaration made "
        "before that and arriving after it does not bring the schedule back",
        (FORGOTTEN_SCHEDULES,),
    ),
    # A new run field: its row in chaperone_otel/_fields.py, then e.g.
    # Migration.add_columns(10, "GPU usage", "gpu_percent"),
)
"""Every migration, in order; the last one's version is :data:`SCHEMA_VERSION`."""

SCHEMA_VERSION: Final = MIGRATIONS[-1].version
"""The schema version this code writes and reads."""


def job_columns(
    migrations: Sequence[Migration] = MIGRATIONS, fields: tuple[RunField, ...] = RUN_FIELDS
) -> tuple[Column, ...]:
    """The ``jobs`` columns in their physical order (as the migrations added them).

    Raises:
        ValueError: a stored run field has no migration, or a migration adds a column
            that is not a stored run field (so a new field cannot be forgotten).
    """
    names = [n for m in migrations for n in m.columns]
    stored = [f.name for f in fields if f.stored]
    missing = [n for n in stored if n not in names]
    if missing:
        raise ValueError(
            f"run field(s) {', '.join(missing)} have no migration: add "
            f"Migration.add_columns({migrations[-1].version + 1}, ..., "
            f"{', '.join(map(repr, missing))}) to MIGRATIONS in sink/_schema.py"
        )
    unknown = sorted(set(names) - set(stored))
    if unknown:
        raise ValueError(f"migrations add columns that are no stored run field: {unknown}")
    return tuple(column_of(field_named(n, fields)) for n in names)


JOB_COLUMNS: Final = job_columns()
"""The ``jobs`` table, one row per (run_id, attempt), derived from the run fields."""

JOB_COLUMN_NAMES: Final = tuple(c.name for c in JOB_COLUMNS)


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
        f"{render(stored_health(policy))} AS health, "
        f"{render(predicate('stuck', policy))} AS stuck, "
        f"{render(predicate('lost', policy))} AS lost, "
        f"{render(predicate('stalled', policy))} AS stalled, "
        f"{render(predicate('overtime', policy))} AS overtime, "
        f"({now} - epoch(last_heartbeat_at)) AS heartbeat_age, "
        f"({now} - epoch(last_seen_at)) AS silence "
        "FROM jobs",
        "CREATE OR REPLACE VIEW problem_runs AS SELECT * FROM jobs_health "
        "WHERE status = 'running' AND (health <> 'healthy' OR stuck OR lost)",
        *schedule_views(),
    ]


def current_version(con: Any) -> int:
    """The file's schema version (0 for an empty database)."""
    # duckdb_tables(), not information_schema: binding information_schema's views costs ~5 ms
    # as the first query of a connection, and every open asks this first.
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE database_name = current_database() AND table_name = 'schema_version'"
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


def migrate(
    con: Any,
    path: str,
    policy: HealthPolicy = DEFAULT_POLICY,
    *,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> int:
    """Apply missing migrations in order, then (re)create stale views. Returns the version.

    ``migrations`` is for tests that add a field (the store always uses :data:`MIGRATIONS`).

    Raises:
        SinkError: the file is a DuckDB database with tables of its own and no
            ``schema_version`` (not a job store), checked before anything is written.
        SchemaVersionError: the file is from a newer chaperone-otel.
    """
    version = check_version(con, path)
    if version == 0:
        refuse_foreign(con, path)
    for migration in migrations:
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
    if version >= SCHEMA_VERSION:  # the views read every column: only a current store has them
        ensure_views(con, view_statements(policy))
    return version


VIEW_COMMENT_PREFIX: Final = "chaperone-otel views "
"""Start of the comment every store view carries; the fingerprint of the view set follows."""

_VIEW_NAME = re.compile(r"CREATE OR REPLACE VIEW (\w+) AS ")


def view_comment(statements: Sequence[str]) -> str:
    """The comment the views made by ``statements`` carry: a fingerprint of their SQL, so a
    change of the rules, the policy or the code that renders them shows as a different one."""
    digest = hashlib.sha256("\n".join(statements).encode()).hexdigest()[:16]
    return VIEW_COMMENT_PREFIX + digest


def view_names(statements: Sequence[str]) -> list[str]:
    """The view each ``CREATE OR REPLACE VIEW`` statement makes, in order."""
    names = []
    for statement in statements:
        m = _VIEW_NAME.match(statement)
        if m is None:  # pragma: no cover - the statements are rendered in this package
            raise ValueError(f"not a CREATE OR REPLACE VIEW statement: {statement[:60]!r}")
        names.append(m.group(1))
    return names


def views_current(con: Any, statements: Sequence[str]) -> bool:
    """True if every view of ``statements`` exists and carries their :func:`view_comment`."""
    rows = con.execute(
        "SELECT view_name, comment FROM duckdb_views() "
        "WHERE database_name = current_database() AND NOT internal"
    ).fetchall()
    have = {str(name): comment for name, comment in rows}
    want = view_comment(statements)
    return all(have.get(name) == want for name in view_names(statements))


def ensure_views(con: Any, statements: Sequence[str]) -> bool:
    """(Re)create the views unless they are current (:func:`views_current`); returns whether
    they were made. One transaction: a failure leaves the old views (and their comments)."""
    if views_current(con, statements):
        return False
    comment = view_comment(statements)
    con.execute("BEGIN TRANSACTION")
    try:
        for statement in statements:
            con.execute(statement)
        for name in view_names(statements):  # CREATE OR REPLACE dropped the old comment
            con.execute(f"COMMENT ON VIEW {name} IS '{comment}'")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return True


def refuse_foreign(con: Any, path: str) -> None:
    """Refuse a database that has tables or views but no ``schema_version``.

    A store at version 0 is an empty database (a new file, or one the user created empty):
    migration 1 is one transaction, so a file it touched has ``schema_version``. Anything
    else is someone else's database. Without this check the first migration's ``CREATE
    TABLE IF NOT EXISTS`` skipped the foreign ``jobs`` table, added the other tables and
    failed later on a missing column, leaving them behind in that database.

    Raises:
        SinkError: the database has tables or views of its own (nothing written).
    """
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = current_database() ORDER BY table_name LIMIT 6"
    ).fetchall()
    if not rows:
        return
    names = [str(r[0]) for r in rows[:5]]
    more = ", ..." if len(rows) > 5 else ""
    raise SinkError(
        f"{path} is a DuckDB database with tables of its own ({', '.join(names)}{more}) and "
        "no chaperone-otel schema_version: it is not a job store, and chaperone-otel will not "
        "add its tables to it (nothing was written). Point sink= / open_sink() / --db at a "
        "new file (e.g. jobs.duckdb) or at an existing job store."
    )


def require_current(con: Any, path: str) -> None:
    """For read-only opens: the file must already be at :data:`SCHEMA_VERSION`."""
    version = check_version(con, path)
    if version < SCHEMA_VERSION:
        if version == 0:
            raise SinkError(f"{path} is not a chaperone-otel job store (no schema_version table)")
        quoted = shlex.quote(path)
        raise SinkError(
            f"{path} has schema version {version} (current: {SCHEMA_VERSION}): it was written "
            "by an older chaperone-otel and is migrated when it is first opened writable. "
            f"From the shell: `chaperone-otel sink serve --db {quoted}` (Ctrl-C once it "
            "serves), or start the application that records to it; "
            f"`chaperone-otel prune --db {quoted} --older-than AGE` migrates it too, and "
            "deletes runs older than AGE. "
            "In Python: open_sink(path, read_only=False)."
        )


def _utc_now_text() -> str:
    from datetime import datetime  # noqa: PLC0415

    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
