"""OTLP/HTTP sink ingest: records/s driven by the real OTLP/HTTP log exporter.

Budget (DESIGN §9): >= 20k records/s over OTLP/HTTP on 2 cores. Measured side by side in one
run (medians of ``--rounds``), with the ratio to the in-process writer printed:

* **OTLP/HTTP fleet**: N sender *processes* (a fleet of workers), each with
  ``opentelemetry-exporter-otlp-proto-http``'s ``OTLPLogExporter``, send batches of 512 log
  records (the BatchLogRecordProcessor default) to a ``chaperone-otel sink serve`` running in
  another process (as in production); under the default ``ack=commit`` each 200 means
  committed to DuckDB. ``export()`` rows include the SDK's Python protobuf encoder
  (~100 µs/record: one exporter process cannot send 20k/s, whatever the sink);
  ``pre-encoded`` rows encode the bodies before timing and send them with the exporter's own
  HTTP client (its headers, retries), so they measure the sink's capacity.
* **reference**: the same records, already decoded, through the store's ``Writer`` in this
  process (``submit`` + ``flush``: the embedded path, no HTTP, no protobuf).
* **decode only** / **encode only**: where the time goes.

Two workloads (``--records``):

* ``full`` (the default, and the workload of the figures in docs/performance.md before issue
  16 goal 4 was measured again): 2,000 runs x 10 lifecycle records (started, heartbeats,
  finished), each carrying the run's full state (~28 attributes), as the runtime emitted
  them before the OTel log writer slimmed its records;
* ``runtime``: the records real supervised runs send today, captured from 10,000 real runs
  through the real SDK (``configure()``'s resource, the OTel log writer's slim ``started``
  and ``finished`` records with the run span's context: ~7 and ~11 attributes, the process's
  host, pid and instance on the resource). Same number of records;
* ``both``: the two side by side in the same rounds (issue 16 goal 4 for each, and the ratio
  between them).

Run: ``.venv/bin/python bench/bench_sink_otlp.py [--quick] [--rounds N] [--records both]``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import NamedTuple

import psutil
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import chaperone_otel as chaperone
from chaperone_otel import semconv as sc
from chaperone_otel._config import get_config
from chaperone_otel.export import _resource as _configure_resource
from chaperone_otel.sink._otlp import decode
from chaperone_otel.sink._owner import StoreOwner
from chaperone_otel.sink._store import read_sidecar

BATCH = 512


def make_logs(runs: int, per_run: int) -> list:
    """SDK log records shaped like the runtime's lifecycle records."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger(sc.INSTRUMENTATION_SCOPE)
    t0 = time.time() - 3600
    for r in range(runs):
        run_id = str(uuid.uuid4())
        for seq in range(1, per_run + 1):
            now = t0 + r * 0.01 + seq
            event = (
                sc.EVENT_JOB_STARTED
                if seq == 1
                else sc.EVENT_JOB_FINISHED
                if seq == per_run
                else sc.EVENT_JOB_HEARTBEAT
            )
            attrs = {
                sc.ATTR_JOB_NAME: f"bench.job{r % 20}",
                sc.ATTR_JOB_QUEUE: f"q{r % 3}",
                sc.ATTR_JOB_RUN_ID: run_id,
                sc.ATTR_JOB_ATTEMPT: 1,
                sc.ATTR_JOB_STATUS: "completed" if seq == per_run else "running",
                sc.ATTR_JOB_HEALTH: "healthy",
                sc.ATTR_JOB_STUCK: False,
                sc.ATTR_JOB_SEQUENCE: seq,
                sc.ATTR_JOB_STARTED_AT: t0 + r * 0.01,
                sc.ATTR_HEARTBEAT_INTERVAL: 60.0,
                sc.ATTR_HEARTBEAT_COUNT: seq * 10,
                sc.ATTR_HEARTBEAT_LAST: now,
                sc.ATTR_PROGRESS_RATIO: seq / per_run,
                sc.ATTR_PROGRESS_UPDATED_AT: now,
                sc.ATTR_PROGRESS_CURRENT: seq * 100,
                sc.ATTR_PROGRESS_TOTAL: per_run * 100,
                sc.ATTR_VIOLATION_COUNT: 0,
                sc.ATTR_LIMIT_POLICY: "record",
                sc.ATTR_HOST_NAME: "bench-host",
                sc.ATTR_PROCESS_PID: 4242,
                sc.ATTR_SERVICE_INSTANCE_ID: "inst-1",
                sc.ATTR_MEMORY_USAGE: 100_000_000 + seq,
                sc.ATTR_MEMORY_PEAK: 120_000_000,
                sc.ATTR_CPU_PERCENT: 42.0,
                sc.ATTR_OPEN_FDS: 12,
                sc.ATTR_METADATA: f'{{"row": {seq}}}',
            }
            if event == sc.EVENT_JOB_HEARTBEAT:
                attrs[sc.ATTR_HEARTBEAT_CALLS] = 10
                attrs[sc.ATTR_HEARTBEAT_KIND] = "heartbeat"
            if seq == per_run:
                attrs[sc.ATTR_JOB_FINISHED_AT] = now
                attrs[sc.ATTR_JOB_DURATION] = float(per_run)
            logger.emit(
                timestamp=int(now * 1e9),
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                body="bench",
                attributes=attrs,
                event_name=event,
            )
    provider.shutdown()
    return list(exporter.get_finished_logs())


def runtime_logs(runs: int) -> list:
    """The log records ``runs`` real supervised runs send (:func:`runtime_runs`)."""
    logs, _spans = runtime_runs(runs)
    if len(logs) != 2 * runs:
        raise SystemExit(f"expected {2 * runs} records from {runs} runs, captured {len(logs)}")
    return logs


def runtime_runs(runs: int) -> tuple[list, list]:
    """The log records and spans ``runs`` real supervised runs send, captured from the real
    SDK.

    ``configure()``d to SDK providers with ``configure()``'s own resource (service, host,
    pid, instance: what the OTel log writer leaves out of the records because the resource
    says it), twenty job names over three queues, a trivial body: each run sends a slim
    ``started`` and a slim ``finished`` record, correlated to its span, exactly as a
    supervised run in a worker does (nothing rebuilt by hand)."""
    chaperone.configure(service_name="bench", heartbeat_interval=60)  # the resource's config
    resource = _configure_resource(get_config())
    logs, spans = InMemoryLogRecordExporter(), InMemorySpanExporter()
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    chaperone.configure(
        service_name="bench",
        heartbeat_interval=60,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(resource=resource),
        logger_provider=provider,
    )
    jobs = [
        chaperone.supervised(f"bench.job{j}", queue=f"q{j % 3}")(lambda: None) for j in range(20)
    ]
    for r in range(runs):
        jobs[r % len(jobs)]()
    chaperone.shutdown()
    provider.shutdown()
    return list(logs.get_finished_logs()), list(spans.get_finished_spans())


def attributes_per_record(logs: list) -> float:
    return sum(len(r.log_record.attributes or {}) for r in logs) / len(logs)


def start_server(path: str, ack: str) -> tuple[subprocess.Popen, str]:
    code = (
        "from chaperone_otel.sink._server import serve; import sys; "
        "serve(sys.argv[1], port=0, ack=sys.argv[2])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, path, ack],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while (owner := read_sidecar(path)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("sink server did not start")
        time.sleep(0.05)
    return proc, owner["url"]


def ingested_logs(url: str) -> int:
    """Lifecycle records the sink at ``url`` has stored from OTLP (its ``/metrics`` counter)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("chaperone_sink_records_ingested_total{") and '"otlp.logs"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0  # no series yet: nothing ingested


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _sender(url: str, share: list, pre_encoded: bool, barrier, results) -> None:
    """One worker process of the fleet: its own exporter, its share of the batches."""
    exporter = OTLPLogExporter(endpoint=url + "/v1/logs")
    failed = 0
    barrier.wait()
    cpu = time.process_time()
    for n, item in share:
        if pre_encoded:
            ok = exporter._client.export(item).success  # what export() does after encoding
        else:
            ok = exporter.export(item).name == "SUCCESS"
        if not ok:
            failed += n
    cpu = time.process_time() - cpu
    exporter.shutdown()
    results.put((failed, cpu))


def _cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live children (the decode workers)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


class Rate(NamedTuple):
    """One OTLP case: records/s and CPU µs per record of the sink and of the senders."""

    rate: float
    sink_cpu: float
    sender_cpu: float


def otlp_rate(
    logs: list,
    tmp: str,
    name: str,
    *,
    senders: int,
    ack: str,
    pre_encoded: bool,
) -> Rate:
    """Records/s through the real OTLPLogExporter from ``senders`` processes (the sink's
    rate: from the moment all senders start until the last answer), with the CPU the sink
    (and its decode workers) and the senders spent in that window, per record."""
    path = os.path.join(tmp, f"{name}.duckdb")
    chunks = [logs[i : i + BATCH] for i in range(0, len(logs), BATCH)]
    items = (
        [(len(c), encode_logs(c).SerializeToString()) for c in chunks]
        if pre_encoded
        else [(len(c), c) for c in chunks]
    )
    shares = [items[i::senders] for i in range(senders)]
    ctx = multiprocessing.get_context("fork")  # senders inherit the records, no pickling
    barrier = ctx.Barrier(senders + 1)
    results = ctx.Queue()
    proc, url = start_server(path, ack)
    workers = []
    try:
        workers = [
            ctx.Process(target=_sender, args=(url, share, pre_encoded, barrier, results))
            for share in shares
        ]
        for w in workers:
            w.start()
        barrier.wait(timeout=60)
        t0 = time.perf_counter()
        cpu0 = _cpu(proc.pid)
        answers = [results.get(timeout=600) for _ in workers]
        elapsed = time.perf_counter() - t0
        sink_cpu = _cpu(proc.pid) - cpu0
        failed = sum(f for f, _ in answers)
        sender_cpu = sum(c for _, c in answers)
        for w in workers:
            w.join(30)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(5)
        stop_server(proc)
    if failed:
        raise SystemExit(f"{failed} records failed to export")
    n = len(logs)
    return Rate(n / elapsed, sink_cpu / n * 1e6, sender_cpu / n * 1e6)


def writer_rate(logs: list, tmp: str, name: str) -> tuple[float, float]:
    bodies = [
        encode_logs(logs[i : i + BATCH]).SerializeToString() for i in range(0, len(logs), BATCH)
    ]
    t0 = time.process_time()  # CPU, not wall time: comparable with the sink's CPU under load
    batches = [decode("logs", b, "protobuf").records for b in bodies]
    decode_rate = len(logs) / (time.process_time() - t0)
    with StoreOwner(os.path.join(tmp, f"{name}.duckdb")) as owner:
        writer = owner.writer
        t0 = time.perf_counter()
        for batch in batches:
            while not writer.submit(batch):
                writer.flush()
        writer.flush()
        rate = len(logs) / (time.perf_counter() - t0)
    return rate, decode_rate


CASES = (
    # label, senders, ack, pre-encoded
    ("OTLP/HTTP export(), 1 exporter process, ack=commit", 1, "commit", False),
    ("OTLP/HTTP export(), fleet of 4 processes, ack=commit", 4, "commit", False),
    ("OTLP/HTTP pre-encoded, 1 sender, ack=commit", 1, "commit", True),
    ("OTLP/HTTP pre-encoded, fleet of 4, ack=commit", 4, "commit", True),
    ("OTLP/HTTP pre-encoded, fleet of 4, ack=queue", 4, "queue", True),
)
GOAL = "OTLP/HTTP pre-encoded, fleet of 8, ack=commit"
"""Issue 16 goal 4's case (>= 2x its records/s on the same machine and senders)."""


PREVIOUS_GOAL_RATE = 21_287
"""The goal case's records/s in docs/performance.md when issue 16 was filed (full workload)."""


def goal_report(goal: list[Rate], decode_rates: list[float], workload: str) -> float:
    """Issue 16 goal 4 for one workload: the rate, where its CPU goes, and two upper bounds
    on what this design could reach on this machine, as multiples of the rate measured in
    this run; returns the rate (median):

    * **with a free decoder** (Amdahl, an estimate): the sink is bound by its interpreter
      lock (it runs at ~1.1 cores), so removing decoding entirely gives about
      sink CPU / (sink CPU - decode CPU), per record (decode CPU measured in this process;
      a profile of the lock gives the same, see docs/performance.md);
    * **machine**: the sink and the senders together cannot use more than every core:
      cores / (sink CPU + sender CPU), per record, however the work is spread.
    """
    rate = statistics.median(r.rate for r in goal)
    sink = statistics.median(r.sink_cpu for r in goal)
    senders = statistics.median(r.sender_cpu for r in goal)
    decode_us = 1e6 / statistics.median(decode_rates)
    cores = os.cpu_count() or 1
    free = sink / max(sink - decode_us, 1e-9)
    machine = cores * 1e6 / (sink + senders) / rate
    print(
        f"\nissue 16 goal 4, {workload} records: {GOAL} (load average "
        f"{os.getloadavg()[0]:.1f}, {cores} cores)"
    )
    print(
        f"  {rate:,.0f} records/s ({rate / PREVIOUS_GOAL_RATE:.2f}x the {PREVIOUS_GOAL_RATE:,} "
        f"records/s of the full workload when the goal was set, another run); CPU per record: "
        f"sink {sink:.1f} us (decode {decode_us:.1f} us of it), senders {senders:.1f} us"
    )
    print(
        f"  estimate with a free decoder: {sink:.1f} / ({sink:.1f} - {decode_us:.1f}) = {free:.2f}x"
    )
    print(f"  machine bound: {cores} cores / ({sink:.1f} + {senders:.1f}) us = {machine:.2f}x")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument(
        "--goal-only", action="store_true", help="only issue 16 goal 4's case and its bounds"
    )
    parser.add_argument(
        "--records",
        choices=("full", "runtime", "both"),
        default="full",
        help="full run state on every record (the old workload), what real runs send, or both",
    )
    args = parser.parse_args()
    runs, per_run = (200, 10) if args.quick else (2000, 10)
    workloads: dict[str, list] = {}
    if args.records in ("full", "both"):
        workloads["full"] = make_logs(runs, per_run)
    if args.records in ("runtime", "both"):
        workloads["runtime"] = runtime_logs(runs * per_run // 2)
    tmp = tempfile.mkdtemp(prefix="bench-sink-otlp-")
    samples: dict[str, list[float]] = {}
    goal: dict[str, list[Rate]] = {w: [] for w in workloads}
    decode_rates: dict[str, list[float]] = {w: [] for w in workloads}
    encode_rates: dict[str, list[float]] = {w: [] for w in workloads}
    try:
        for r in range(args.rounds):
            for w, logs in workloads.items():  # interleaved: each round runs every workload
                local, decode_rate = writer_rate(logs, tmp, f"local{r}{w}")
                decode_rates[w].append(decode_rate)
                goal[w].append(
                    otlp_rate(logs, tmp, f"r{r}{w}goal", senders=8, ack="commit", pre_encoded=True)
                )
                t0 = time.process_time()
                for i in range(0, len(logs), BATCH):
                    encode_logs(logs[i : i + BATCH]).SerializeToString()
                encode_rates[w].append(len(logs) / (time.process_time() - t0))
                if args.goal_only or w != "full":
                    continue
                samples.setdefault("in-process Writer.submit+flush (reference)", []).append(local)
                samples.setdefault("server-side decode only (_otlp.decode, CPU time)", []).append(
                    decode_rate
                )
                label = "client-side SDK encode only (encode_logs, CPU time)"
                samples.setdefault(label, []).append(encode_rates[w][-1])
                for k, (label, senders, ack, pre) in enumerate(CASES):
                    samples.setdefault(label, []).append(
                        otlp_rate(
                            logs, tmp, f"r{r}c{k}", senders=senders, ack=ack, pre_encoded=pre
                        ).rate
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for w, logs in workloads.items():
        print(
            f"{w} records: {len(logs)}, {attributes_per_record(logs):.1f} attributes a record, "
            f"{len(encode_logs(logs[:BATCH]).SerializeToString()) / min(BATCH, len(logs)):.0f} "
            f"bytes a record in OTLP protobuf"
        )
    print(f"batches of {BATCH}, cores: {os.cpu_count()}, medians of {args.rounds} rounds")
    if samples:
        samples[GOAL] = [g.rate for g in goal["full"]]
        rows = [(label, statistics.median(v)) for label, v in samples.items()]
        local = rows[0][1]
        print(f"{'path':<56}{'records/s':>12}{'vs in-process':>15}")
        for label, rate in rows:
            print(f"{label:<56}{rate:>12,.0f}{rate / local:>15.2f}")
        budget = 20_000
        commit = max(rate for label, rate in rows if "pre-encoded" in label and "commit" in label)
        print(
            f"budget >= {budget:,} records/s over OTLP/HTTP (sink capacity, ack=commit, best "
            f"fleet): {'met' if commit >= budget else 'NOT met'} ({commit / budget:.2f}x)"
        )
    rates = {w: goal_report(goal[w], decode_rates[w], w) for w in workloads}
    for w in workloads:
        print(
            f"  SDK encode only, {w} records: {statistics.median(encode_rates[w]):,.0f} "
            "records/s (CPU time, this process)"
        )
    if len(rates) == 2:
        ratio = statistics.median(
            b.rate / a.rate for a, b in zip(goal["full"], goal["runtime"], strict=True)
        )
        print(
            f"\nruntime records / full records, same rounds: {ratio:.2f}x (median of the "
            "rounds' ratios; the records are smaller because the runtime sends less)"
        )
        print(
            f"goal >= 2x the full workload's rate: {'met' if ratio >= 2 else 'NOT met'} with "
            "what real runs send today"
        )
    else:
        print(
            "goal >= 2x: compare with --records both (the two workloads side by side); see "
            "docs/performance.md"
        )


if __name__ == "__main__":
    main()
