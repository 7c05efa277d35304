"""Reading OTLP log attributes: the sink's upb loop against the alternatives (issue 16 goal 4).

Decoding is 45 % of the sink's interpreter-lock time, and 20 of its ~28 µs a record are the
attribute loop (``_otlp_fields._pb_attrs``). This bench times, over the same lifecycle records
as ``bench_sink_otlp.py``, interleaved in every round (medians, ratios to the reference):

* **reference**: ``_pb_attrs`` as the sink runs it;
* **iteration only**: walking the repeated field without reading anything (the floor of any
  upb-based loop: one wrapper object per attribute);
* **ListFields**: one ``ListFields()`` per value instead of ``WhichOneof`` + ``getattr``;
* **wire scanner**: a pure-Python reader of the ``KeyValue`` bytes (no upb wrappers), over each
  record's bytes (serialising them is not timed), checked to give the same dicts;
* **wire scanner, mypyc** (``--mypyc``): the same source compiled with mypyc into a temporary
  directory (needs mypy and a C compiler; a one-off measurement, nothing ships compiled).

Also printed: the whole ``_otlp.decode`` and the protobuf parse alone, µs a record.

Run: ``.venv/bin/python bench/bench_otlp_decode.py [--rounds N] [--mypyc]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

from bench_sink_otlp import BATCH, make_logs
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from chaperone_otel.sink._otlp import decode
from chaperone_otel.sink._otlp_fields import _pb_attrs

SCANNER = textwrap.dedent(
    '''
    """Scalar attributes of one serialised LogRecord, read from the wire format."""
    import struct
    from typing import Any

    _DOUBLE = struct.Struct("<d")


    def varint(data: bytes, at: int) -> tuple[int, int]:
        value = 0
        shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, at
            shift += 7


    def any_value(data: bytes, at: int) -> Any:
        tag = data[at]
        at += 1
        if tag == 0x0A:  # string_value
            n, at = varint(data, at)
            return data[at : at + n].decode()
        if tag == 0x21:  # double_value
            return _DOUBLE.unpack_from(data, at)[0]
        if tag == 0x18:  # int_value (int64, two's complement)
            v, at = varint(data, at)
            return v - (1 << 64) if v >= 1 << 63 else v
        if tag == 0x10:  # bool_value
            v, at = varint(data, at)
            return v != 0
        return None


    def attributes(data: bytes) -> dict[str, Any]:
        """The KeyValues (field 6) of a LogRecord; other fields are skipped."""
        out: dict[str, Any] = {}
        at = 0
        end = len(data)
        while at < end:
            tag, at = varint(data, at)
            wire = tag & 7
            if wire == 2:
                n, at = varint(data, at)
                if tag == 0x32:
                    k, inner = varint(data, at + 1)  # KeyValue.key (field 1)
                    key = data[inner : inner + k].decode()
                    inner += k + 1  # KeyValue.value (field 2)
                    _, inner = varint(data, inner)
                    out[key] = any_value(data, inner)
                at += n
            elif wire == 0:
                _, at = varint(data, at)
            elif wire == 1:
                at += 8
            else:
                at += 4
        return out
    '''
)

_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def iteration_only(lr: Any) -> None:
    for _kv in lr.attributes:
        pass


def list_fields(lr: Any) -> dict[str, Any]:
    out = {}
    for kv in lr.attributes:
        fields = kv.value.ListFields()
        if fields:
            out[kv.key] = fields[0][1]
    return out


def load_scanner(tmp: str, compiled: bool) -> Any:
    name = "otlp_scan_compiled" if compiled else "otlp_scan"
    path = os.path.join(tmp, f"{name}.py")
    with open(path, "w") as f:
        f.write(SCANNER)
    if compiled:
        mypyc = shutil.which("mypyc") or os.path.join(os.path.dirname(sys.executable), "mypyc")
        subprocess.run([mypyc, f"{name}.py"], cwd=tmp, check=True, capture_output=True)
    sys.path.insert(0, tmp)
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(tmp)
    if compiled and not module.__file__.endswith(".so"):
        raise SystemExit("mypyc did not produce an extension module")
    return module


def per_record(fn: Callable[[Any], Any], items: list[Any]) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians reported)")
    parser.add_argument("--mypyc", action="store_true", help="also time the scanner compiled")
    args = parser.parse_args()
    logs = make_logs(400, 10)
    bodies = [
        encode_logs(logs[i : i + BATCH]).SerializeToString() for i in range(0, len(logs), BATCH)
    ]
    requests = [logs_service_pb2.ExportLogsServiceRequest.FromString(b) for b in bodies]
    records = [
        lr
        for r in requests
        for rl in r.resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
    ]
    raw = [lr.SerializeToString() for lr in records]
    tmp = tempfile.mkdtemp(prefix="bench-otlp-decode-")
    try:
        variants: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
            "reference: _pb_attrs (upb)": (lambda lr: _pb_attrs(lr.attributes), records),
            "iteration only (upb floor)": (iteration_only, records),
            "ListFields per value (upb)": (list_fields, records),
        }
        scanners = [("wire scanner, pure Python", load_scanner(tmp, compiled=False))]
        if args.mypyc:
            scanners.append(("wire scanner, mypyc-compiled", load_scanner(tmp, compiled=True)))
        for label, module in scanners:
            same = all(
                module.attributes(r) == _pb_attrs(lr.attributes)
                for r, lr in zip(raw, records, strict=True)
            )
            if not same:
                raise SystemExit(f"{label} reads the attributes differently")
            variants[label] = (module.attributes, raw)
        samples: dict[str, list[float]] = {label: [] for label in variants}
        whole: list[float] = []
        parse: list[float] = []
        for _ in range(args.rounds):
            for label, (fn, items) in variants.items():
                samples[label].append(per_record(fn, items))
            t0 = time.perf_counter()
            for body in bodies:
                decode("logs", body, "protobuf")
            whole.append((time.perf_counter() - t0) / len(logs) * 1e6)
            t0 = time.perf_counter()
            for body in bodies:
                logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            parse.append((time.perf_counter() - t0) / len(logs) * 1e6)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reference = statistics.median(samples["reference: _pb_attrs (upb)"])
    print(
        f"{len(records)} lifecycle records (~28 attributes each), medians of {args.rounds} "
        f"interleaved rounds, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'attribute read':<34}{'us/record':>10}{'x reference':>13}")
    for label, values in samples.items():
        m = statistics.median(values)
        print(f"{label:<34}{m:>10.2f}{m / reference:>13.2f}")
    print(
        f"whole _otlp.decode: {statistics.median(whole):.2f} us/record; protobuf parse alone: "
        f"{statistics.median(parse):.2f} us/record"
    )


if __name__ == "__main__":
    main()
