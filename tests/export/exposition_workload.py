"""A worker for the real-Prometheus test of the /metrics app (run as a subprocess).

``python exposition_workload.py`` configures chaperone-otel with its /metrics on a free
loopback port, starts live runs whose job names and queues need escaping (quotes,
backslashes, newlines, unicode; some past the 1 s long-run threshold, so with their run id),
finishes a few (counters, the duration histogram), serves prometheus_client's own
``make_wsgi_app`` over the same default registry on another port as the reference, prints
``{"ours": URL, "reference": URL}`` on one stdout line, and waits until it is killed.
"""

from __future__ import annotations

import json
import threading
import time

from prometheus_client import REGISTRY, start_http_server

import chaperone_otel
from chaperone_otel import supervised

NAMES = ['odd "name"\\x', "line\nbreak", "unicode.é✓😀", "plain.job"]


def main() -> None:
    setup = chaperone_otel.configure(
        service_name="chaperone-exposition", prometheus_port=0, long_run_threshold=1,
        heartbeat_interval=3600, sample_interval=3600,
    )
    assert setup is not None
    runs = [supervised(name, queue=queue).start()
            for name in NAMES for queue in ("q", 'a\\b"c')]
    for run in runs[::3]:
        run.report_progress(1, 3)
    time.sleep(1.2)  # past the long-run threshold: these carry their run id
    runs += [supervised(name, queue="young").start() for name in NAMES]
    for name in NAMES:
        supervised(name, queue="done").start().finish()
    server, _ = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
    print(json.dumps({"ours": setup.prometheus_url,
                      "reference": f"http://127.0.0.1:{server.server_port}/metrics"}),
          flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
