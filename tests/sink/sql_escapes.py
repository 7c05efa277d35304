"""Escape attempts for user SQL (``sink.sql()``, ``chaperone-otel sql``, ``/api/sql``).

Each must be refused with a clear reason, without file content or a network attempt.
``{d}``: a directory holding the secret file (and symlinks to it named so that DuckDB's
catalog-qualified names resolve to them); ``{s}``: the secret file; ``{url}``: an
``http://127.0.0.1:PORT`` listener that counts connections.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

SECRET = "TOPSECRET-7f3a9c"

FILE_READERS = [
    "SELECT * FROM read_text('{s}')",
    "SELECT * FROM read_blob('{s}')",
    "SELECT * FROM read_csv('{s}')",
    "SELECT * FROM read_csv_auto('{s}')",
    "SELECT * FROM read_csv('{s}', header=false, columns={{'a': 'VARCHAR'}})",
    "SELECT * FROM read_json('{s}')",
    "SELECT * FROM read_json_auto('{s}')",
    "SELECT * FROM read_ndjson('{s}')",
    "SELECT * FROM read_json_objects('{s}')",
    "SELECT * FROM read_parquet('{s}')",
    "SELECT * FROM parquet_scan('{s}')",
    "SELECT * FROM parquet_metadata('{s}')",
    "SELECT * FROM parquet_schema('{s}')",
    "SELECT * FROM sniff_csv('{s}')",
    "SELECT * FROM glob('{d}/*')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_text('{d}/*')",
    "SELECT * FROM read_text(['{s}', '/etc/hostname'])",
    "SELECT * FROM read_text('file://{s}')",
    "SELECT * FROM read_csv('file://{s}')",
    "SELECT * FROM read_text('{url}/secret')",
    "SELECT * FROM read_csv('{url}/x.csv')",
    "SELECT * FROM read_parquet('{url}/x.parquet')",
    "SELECT * FROM read_json('{url}/x.json')",
    "SELECT * FROM read_text('s3://bucket/key')",
    "SELECT * FROM query_table('{s}')",
    "SELECT * FROM query_table('{d}/k.information_schema.csv')",
    "SELECT * FROM query('SELECT * FROM read_text(''{s}'')')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
    "'SELECT * FROM read_text(''{s}'')'))",
    "SELECT * FROM System.Main.JSON_Execute_Serialized_SQL(json_serialize_sql("
    "'SELECT content FROM read_blob(''{s}'')'))",
    "SELECT * FROM iceberg_scan('{d}')",
    "SELECT * FROM delta_scan('{d}')",
    "SELECT * FROM sqlite_scan('{s}', 'x')",
    "SELECT * FROM postgres_scan('host=127.0.0.1', 'public', 'x')",
    "SELECT * FROM st_read('{s}')",
    "SELECT * FROM read_xlsx('{s}')",
    "SELECT name FROM jobs WHERE name IN (SELECT content FROM read_text('{s}'))",
    "SELECT (SELECT content FROM read_text('{s}')) AS x",
    "WITH t AS (SELECT * FROM read_text('{s}')) SELECT * FROM t",
    "SELECT * FROM jobs UNION ALL SELECT content, NULL FROM read_text('{s}')",
    "EXPLAIN ANALYZE SELECT * FROM read_text('{s}')",
    "SELECT * FROM read_text(concat('{d}', '/secret.txt'))",
]

REPLACEMENT_SCANS = [
    "SELECT * FROM '{s}'",
    'SELECT * FROM "{s}"',
    "SELECT * FROM '{d}/*.txt'",
    "SELECT * FROM 'file://{s}'",
    "SELECT * FROM '{url}/x.csv'",
    "SELECT * FROM '{d}/k.information_schema.csv'",
    "FROM '{s}'",
    "SELECT * FROM jobs, '{s}'",
    'SELECT * FROM (WITH "{s}" AS (SELECT 1 AS x) SELECT * FROM "{s}") a, "{s}" b',
    'SELECT * FROM (WITH "{s}" AS (SELECT 1) SELECT 1) a WHERE EXISTS (SELECT * FROM "{s}")',
    "SELECT * FROM SECRET_TABLE",
    "SELECT * FROM secret_frame",
    'SELECT * FROM "os"',
    'SELECT * FROM information_schema."json"',
    'SELECT * FROM information_schema."csv"',
    'SELECT * FROM information_schema."os"',
]

CATALOG_QUALIFIED = [
    'SELECT * FROM "{d}/k".information_schema.csv',
    'SELECT * FROM "{d}/k".main.csv',
    'SELECT * FROM "{d}/k".information_schema."csv"',
    'SELECT * FROM "{url}/?".information_schema.csv',
    'SELECT * FROM "https://127.0.0.1:1/?".information_schema.csv',
    'SELECT * FROM "file://{d}/k".information_schema.csv',
    'SELECT * FROM main."{s}"',
    'SELECT * FROM information_schema."{s}"',
    'SELECT * FROM "{d}"."k.information_schema"."csv"',
    "SELECT * FROM other_db.jobs",
    "SELECT * FROM other_db.main.jobs",
    'SELECT * FROM "{s}".main.jobs',
]

EXTENSIONS = [
    "INSTALL httpfs",
    "FORCE INSTALL httpfs",
    "INSTALL httpfs FROM '{url}'",
    "INSTALL '{url}/x.duckdb_extension'",
    "INSTALL '{s}'",
    "LOAD httpfs",
    "LOAD '{s}'",
    "LOAD '{url}/x.duckdb_extension'",
    "UPDATE EXTENSIONS",
    "UPDATE EXTENSIONS (httpfs)",
]

SETTINGS = [
    "SET enable_external_access = true",
    "SET GLOBAL enable_external_access = true",
    "RESET enable_external_access",
    "RESET ALL",
    "SET lock_configuration = false",
    "SET allowed_directories = ['/']",
    "SET allowed_paths = ['{s}']",
    "SET memory_limit = '100GB'",
    "SET threads = 64",
    "SET temp_directory = '{d}'",
    "SET extension_directory = '{d}'",
    "SET custom_extension_repository = '{url}'",
    "SET autoinstall_known_extensions = true",
    "SET autoload_known_extensions = true",
    "SET python_enable_replacements = true",
    "SET python_scan_all_frames = true",
    "SET profiling_output = '{d}/out'",
    "SET VARIABLE x = 1",
    "SET TimeZone = 'Europe/Paris'",
    "PRAGMA memory_limit = '1GB'",
    "PRAGMA threads = 8",
    "PRAGMA enable_profiling",
    "PRAGMA enable_external_access",
    "PRAGMA version",
    "CALL pragma_version()",
]

WRITES = [
    "DELETE FROM jobs",
    "UPDATE jobs SET status = 'completed'",
    "INSERT INTO jobs (run_id, attempt) VALUES ('x', 1)",
    "INSERT OR REPLACE INTO schema_version VALUES (99)",
    "DROP TABLE jobs",
    "DROP VIEW jobs_health",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT * FROM read_text('{s}')",
    "CREATE VIEW v AS SELECT * FROM read_text('{s}')",
    "CREATE MACRO m(x) AS x",
    "CREATE SEQUENCE s",
    "CREATE INDEX i ON jobs (name)",
    "CREATE TYPE mood AS ENUM ('a')",
    "CREATE SCHEMA s",
    "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "DROP SECRET s",
    "ALTER TABLE jobs ADD COLUMN x INT",
    "ALTER VIEW jobs_health RENAME TO x",
    "TRUNCATE jobs",
    "COMMENT ON TABLE jobs IS 'x'",
    "MERGE INTO jobs USING (SELECT 1 AS a) s ON false WHEN NOT MATCHED THEN DO NOTHING",
    "EXPLAIN ANALYZE DELETE FROM jobs",
    "EXPLAIN ANALYZE UPDATE jobs SET status = 'x'",
    "EXPLAIN ANALYZE INSERT INTO schema_version SELECT * FROM schema_version",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE COPY jobs TO '{d}/out.csv'",
    "WITH x AS (SELECT 1) DELETE FROM jobs",
    "SELECT 1; DELETE FROM jobs",
    "SELECT 1; SELECT * FROM read_text('{s}')",
]

OTHER_STATEMENTS = [
    "ATTACH '{s}' AS x",
    "ATTACH ':memory:' AS x",
    "ATTACH '{url}/x.duckdb' AS x",
    "ATTACH '{d}/new.duckdb' AS x",
    "DETACH x",
    "USE x",
    "COPY jobs TO '{d}/out.csv'",
    "COPY (SELECT 1) TO '{d}/out.parquet' (FORMAT parquet)",
    "COPY jobs FROM '{s}'",
    "COPY FROM DATABASE memory TO x",
    "EXPORT DATABASE '{d}/exp'",
    "IMPORT DATABASE '{d}'",
    "CHECKPOINT",
    "FORCE CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    "BEGIN TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "PREPARE p AS SELECT * FROM read_text('{s}')",
    "EXECUTE p",
    "DEALLOCATE p",
    "CALL checkpoint()",
    "CALL read_text('{s}')",
    "DESCRIBE SELECT * FROM read_text('{s}')",
    "SUMMARIZE SELECT * FROM read_text('{s}')",
]

ATTEMPTS = (
    FILE_READERS + REPLACEMENT_SCANS + CATALOG_QUALIFIED + EXTENSIONS + SETTINGS + WRITES
    + OTHER_STATEMENTS
)

CLEAR_REASON = (
    r"read-only|reads only the job store|disabled for queries|exactly one statement"
    r"|cannot parse SQL|configuration has been locked|sink\.sql\(\) refuses"
)
"""What a refusal says: the kind of statement, the engine's file/network refusal, the store's
tables, a parse error, or the locked configuration."""


def prepare_secret(root: Path) -> Path:
    """The secret file and symlinks named the way dotted names resolve to paths."""
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "secret.txt"
    secret.write_text(f"{SECRET}\n")
    for name in ("k.information_schema.csv", "k.main.csv", "k.information_schema.txt",
                 "x.csv", "k.information_schema.csv.information_schema.csv"):
        link = root / name
        if not link.exists():
            os.symlink(secret, link)
    return secret


class ConnectionCounter:
    """A loopback TCP listener that counts connections (a network attempt of the engine)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def render(attempt: str, secret: Path, url: str) -> str:
    """The attempt with its placeholders filled in."""
    return attempt.format(d=secret.parent, s=secret, url=url)
