"""The demo's regular workloads: the seed's patterns, each a supervised run of realistic work.

Batches in chunks, a real CSV file, an API sync with retries, a bulk update of a real SQLite
database, a job in phases. ``chaperone-otel demo`` (:mod:`._demo`) runs them on a few worker
threads, each with a :class:`Ctx` of its own, beside the three runs that go wrong on purpose.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._decorator import supervised

if TYPE_CHECKING:
    from .._run import Supervision


class Board(Protocol):
    """Where a workload shows its run (the demo's live view and summary)."""

    def add(self, run: Supervision) -> None: ...


@dataclass
class Ctx:
    """What every workload gets: its time budget, a temp dir, randomness, the stop flag."""

    pace: float
    workdir: Path
    rng: random.Random
    board: Board
    stop: threading.Event

    def nap(self, seconds: float) -> None:
        """Simulated work; returns early when the demo is aborted."""
        self.stop.wait(seconds)


def process_transactions(ctx: Ctx) -> None:
    """Batch processing: chunks of 100, heartbeat every 50 records, progress per record."""
    total = ctx.rng.randrange(1500, 3000)
    per_chunk = ctx.pace / math.ceil(total / 100)
    with supervised("billing.process_transactions", queue="billing") as run:
        ctx.board.add(run)
        processed = 0
        amount = 0.0
        for start in range(0, total, 100):
            for _ in range(start, min(start + 100, total)):
                amount += ctx.rng.uniform(1, 500)
                processed += 1
                if processed % 50 == 0:
                    run.heartbeat(processed=processed, batch=start // 100)
                run.report_progress(processed, total)
            ctx.nap(per_chunk)
        run.heartbeat(status="completed", amount=round(amount, 2))


def process_csv(ctx: Ctx) -> None:
    """File processing: write a real CSV, count its lines, parse it with progress."""
    rows = ctx.rng.randrange(2000, 5000)
    path = ctx.workdir / f"orders-{ctx.rng.randrange(10**6):06d}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["order_id", "customer", "amount", "currency"])
        for i in range(rows):
            writer.writerow(
                [
                    i,
                    f"cust-{ctx.rng.randrange(500)}",
                    f"{ctx.rng.uniform(5, 900):.2f}",
                    ctx.rng.choice(["EUR", "USD", "GBP"]),
                ]
            )
    with supervised("imports.process_csv", queue="imports", attributes={"file": path.name}) as run:
        ctx.board.add(run)
        run.heartbeat(status="started", file=path.name)
        with path.open() as fh:
            total = sum(1 for _ in fh) - 1
        run.heartbeat(status="counted", total=total)
        totals: dict[str, float] = {}
        per_100 = ctx.pace / max(1, total / 100)
        with path.open(newline="") as fh:
            for current, record in enumerate(csv.DictReader(fh), 1):
                totals[record["currency"]] = totals.get(record["currency"], 0.0) + float(
                    record["amount"]
                )
                if current % 100 == 0:
                    run.report_progress(current, total)
                    run.heartbeat(processed=current)
                    ctx.nap(per_100)
        run.report_progress(total, total)
        run.heartbeat(status="completed", **{k: round(v, 2) for k, v in totals.items()})
    path.unlink(missing_ok=True)


def _fetch_page(ctx: Ctx, page: int) -> list[dict[str, Any]]:
    """A simulated HTTP GET: latency, and a timeout or a 503 now and then (no network)."""
    ctx.nap(ctx.rng.uniform(0.02, 0.08) * ctx.pace)
    roll = ctx.rng.random()
    if roll < 0.2:
        raise TimeoutError(f"GET /v2/contacts?page={page}: read timed out")
    if roll < 0.3:
        raise ConnectionResetError(f"GET /v2/contacts?page={page}: 503 Service Unavailable")
    return [{"id": page * 100 + i, "email": f"c{page * 100 + i}@example.com"} for i in range(100)]


def sync_contacts(ctx: Ctx) -> None:
    """API sync with retries (backoff), then per-item sync with rate limiting."""
    pages = 3
    with supervised(
        "crm.sync_contacts", queue="integrations", timeout=max(30.0, ctx.pace * 10)
    ) as run:
        ctx.board.add(run)
        run.heartbeat(status="fetching")
        items: list[dict[str, Any]] = []
        retries = 0
        for page in range(pages):
            for attempt in range(1, 5):
                try:
                    items += _fetch_page(ctx, page)
                    break
                except (TimeoutError, ConnectionError) as exc:
                    retries += 1
                    run.heartbeat(status="retrying", page=page, attempt=attempt, error=str(exc))
                    if attempt == 4:
                        raise
                    ctx.nap(0.05 * 2**attempt)
        run.heartbeat(status="fetched", count=len(items), retries=retries)
        per_item = ctx.pace * 0.6 / len(items)
        for index, _item in enumerate(items, 1):
            run.report_progress(index, len(items))
            if index % 50 == 0:
                run.heartbeat(synced=index)
            if index % 10 == 0:
                ctx.nap(per_item * 10)
        run.heartbeat(status="completed", synced=len(items), retries=retries)


def bulk_update_users(ctx: Ctx) -> None:
    """Bulk database update: a real SQLite file, chunks by id, one transaction per chunk."""
    db = ctx.workdir / f"users-{ctx.rng.randrange(10**6):06d}.sqlite3"
    con = sqlite3.connect(db)
    try:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, plan TEXT, active INTEGER)")
        count = ctx.rng.randrange(1500, 3000)
        con.executemany(
            "INSERT INTO users VALUES (?, ?, 1)",
            ((i, ctx.rng.choice(["free", "pro"])) for i in range(1, count + 1)),
        )
        con.commit()
        with supervised("users.bulk_update", queue="maintenance") as run:
            ctx.board.add(run)
            run.heartbeat(status="started")
            (total,) = con.execute("SELECT count(*) FROM users WHERE plan = 'free'").fetchone()
            updated, last_id = 0, 0
            per_chunk = ctx.pace / max(1, total / 100)
            while True:
                ids = [
                    r[0]
                    for r in con.execute(
                        "SELECT id FROM users WHERE plan = 'free' AND id > ? ORDER BY id LIMIT 100",
                        (last_id,),
                    )
                ]
                if not ids:
                    break
                with con:  # one transaction per chunk
                    for user_id in ids:
                        con.execute("UPDATE users SET plan = 'trial' WHERE id = ?", (user_id,))
                        updated += 1
                        if updated % 10 == 0:
                            run.report_progress(updated, total)
                last_id = ids[-1]
                run.heartbeat(updated=updated)
                ctx.nap(per_chunk)
            run.report_progress(updated, total)
            run.heartbeat(status="completed", total_updated=updated)
    finally:
        con.close()
        db.unlink(missing_ok=True)


def nightly_rebuild(ctx: Ctx) -> None:
    """A multi-phase job: fetch 0-25 %, validate 25-50 %, process 50-90 %, cleanup 90-100 %."""
    with supervised("reports.nightly_rebuild", queue="reports") as run:
        ctx.board.add(run)
        run.phases(
            {"fetch": (0, 25), "validate": (25, 50), "process": (50, 90), "cleanup": (90, 100)}
        )
        shares = {"fetch": 0.2, "validate": 0.15, "process": 0.55, "cleanup": 0.1}
        for phase, share in shares.items():
            steps = 20
            with run.phase_scope(phase):
                for step in range(1, steps + 1):
                    ctx.nap(ctx.pace * share / steps)
                    run.report_progress(step, steps)
                run.heartbeat(phase_done=phase)


WORKLOADS: Sequence[Callable[[Ctx], None]] = (
    process_transactions,
    process_csv,
    sync_contacts,
    bulk_update_users,
    nightly_rebuild,
)


def worker_context(ctx: Ctx, seed: int | None, worker: int) -> Ctx:
    """The context of one worker thread, with randomness of its own.

    The workers run side by side, so one shared generator would hand its numbers out in
    whatever order the threads happen to be scheduled: ``--seed`` would not repeat the demo
    (which sync retries, which fails). Each worker's generator is derived from the seed and
    the worker's number instead, so the n-th run of each worker is the same every time.
    """
    rng = random.Random(None if seed is None else f"{seed}:{worker}")
    return dataclasses.replace(ctx, rng=rng)


__all__ = ["WORKLOADS", "Ctx", "worker_context"]
