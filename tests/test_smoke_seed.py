"""The seed's three tests of a user's job, written with the public testing helpers."""

from __future__ import annotations

from chaperone_otel import Supervised
from chaperone_otel.testing import Capture


class ProcessDataset(Supervised):
    heartbeat_interval = 30

    def run(self, rows: int = 50) -> int:
        self.heartbeat({"status": "started"})
        for i in range(1, rows + 1):
            self.report_progress(i, rows)
            if i % 10 == 0:
                self.heartbeat(processed=i)
        self.heartbeat({"status": "completed"})
        return rows


def test_job_sends_heartbeats(chaperone: Capture) -> None:
    """Heartbeats from the job's code reach the captured records."""
    job = ProcessDataset()
    job.run()
    run = chaperone.run(job.supervision_id)
    assert run.heartbeats
    assert run.heartbeat_count == 7


def test_job_reports_progress(chaperone: Capture) -> None:
    """Progress reaches 100 %."""
    job = ProcessDataset()
    job.run()
    assert chaperone.run(job.supervision_id).progress == 100


def test_job_completes_successfully(chaperone: Capture) -> None:
    """The run completes, with a finished span."""
    job = ProcessDataset()
    assert job.run() == 50
    run = chaperone.run(job.supervision_id)
    assert run.completed
    assert run.completed_at is not None  # the guide's assertNotNull(completed_at)
    assert run.completed_at == run.finished_at
    assert run.duration is not None
    assert run.duration >= 0
    assert run.span is not None
    assert run.span.attributes["chaperone.job.status"] == "completed"
