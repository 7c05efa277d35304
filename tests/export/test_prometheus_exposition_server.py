"""A real Prometheus scrapes the worker's /metrics (our app, OpenMetrics 1.0.0 as Prometheus
asks for it) and prometheus_client's own app over the same registry in the same worker
process, and stores the same series from both: the same label sets, the same number of
samples per scrape, and the same values for the series that do not move between the two
scrapes (every chaperone_* series of this idle workload: heartbeats are an hour apart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.workers import free_port, stop
from tests.waiting import wait_until

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The worker (subprocess) and Prometheus (subprocess) scraping both its endpoints
    every second; yields Prometheus' base URL."""
    tmp = tmp_path_factory.mktemp("exposition")
    procs: list[subprocess.Popen[str]] = []
    try:
        with open(tmp / "worker.log", "w") as worker_log, \
                open(tmp / "prometheus.log", "w") as prometheus_log:
            worker = subprocess.Popen([sys.executable, str(HERE / "exposition_workload.py")],
                                      stdout=subprocess.PIPE, stderr=worker_log, text=True,
                                      env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
            procs.append(worker)
            assert worker.stdout is not None
            urls = json.loads(worker.stdout.readline())
            port = free_port()
            config = {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {"job_name": job, "static_configs": [
                        {"targets": [urllib.parse.urlsplit(urls[job]).netloc]}]}
                    for job in ("ours", "reference")
                ],
            }
            (tmp / "prometheus.yml").write_text(json.dumps(config))
            procs.append(subprocess.Popen(
                [prometheus_binary, f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=prometheus_log, text=True))
            yield f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            if proc.stdout is not None:
                proc.stdout.close()
            stop(proc, grace=10)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except OSError:  # not up yet
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _by_job(results: list[dict[str, Any]]) -> dict[str, dict[tuple[tuple[str, str], ...], str]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], str]] = {}
    for result in results:
        labels = dict(result["metric"])
        job = labels.pop("job")
        labels.pop("instance")
        out.setdefault(job, {})[tuple(sorted(labels.items()))] = result["value"][1]
    return out


def test_prometheus_stores_the_same_series_from_both_apps(prometheus: str) -> None:
    def both_scraped() -> bool:
        up = _by_job(_query(prometheus, "up"))
        return all(list(up.get(job, {}).values()) == ["1"] for job in ("ours", "reference"))

    wait_until(both_scraped, 60, "both endpoints scraped (up == 1)", every=0.25)
    samples = _by_job(_query(prometheus, "scrape_samples_scraped"))
    assert samples["ours"] == samples["reference"]

    def chaperone_series() -> dict[str, dict[tuple[tuple[str, str], ...], str]] | None:
        series = _by_job(_query(prometheus, '{__name__=~"chaperone_.*"}'))
        return series if len(series) == 2 else None

    series = wait_until(chaperone_series, 30, "the chaperone_* series of both jobs", every=0.25)
    assert series["ours"] == series["reference"]
    names = {dict(key).get("chaperone_job_name") for key in series["ours"]}
    assert {'odd "name"\\x', "line\nbreak", "unicode.é✓😀", "plain.job"} <= names
    run_ids = {dict(key).get("chaperone_job_run_id") for key in series["ours"]}
    assert len(run_ids - {None, ""}) >= 8  # the runs past the long-run threshold
    # Every other series too (the process collector's values move between the two scrapes).
    everything = _by_job(_query(prometheus, '{__name__=~".+", __name__!~"scrape_.*|up"}'))
    assert set(everything["ours"]) == set(everything["reference"])
