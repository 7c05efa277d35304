"""``chaperone_otel.testing``: what a user's own test suite gets from ``capture()``."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from chaperone_otel import _setup, supervised
from chaperone_otel import semconv as sc
from chaperone_otel._runtime import runtime
from chaperone_otel.testing import Capture, capture
from tests.export.test_record_limits import ENV_LIMITS


def test_a_capture_ignores_the_applications_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application's variables set while its tests run (``CHAPERONE_OTEL_SINK``, a
    ``/metrics`` port, an OTLP endpoint, console output): a capture writes no store, serves
    no port, exports nothing and waits on nothing. Before, a test suite's runs went into
    the production store or collector, and with nothing listening at the endpoint each
    test's teardown waited ~15 s for the exporter."""
    store = tmp_path / "production.duckdb"
    monkeypatch.setenv("CHAPERONE_OTEL_SINK", str(store))
    monkeypatch.setenv("CHAPERONE_OTEL_PROMETHEUS_PORT", "0")
    monkeypatch.setenv("CHAPERONE_OTEL_CONSOLE", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    with capture() as cap:
        with supervised("isolated.job", heartbeat_interval=7):
            pass
        assert _setup._setup is None  # no exporter of any kind was installed
        assert runtime().config.heartbeat_interval == 60.0  # defaults, not the environment
        assert cap.last_run("isolated.job").status == "completed"
    assert not store.exists()
    assert not [t for t in threading.enumerate() if "sink" in t.name or "prometheus" in t.name]


def test_a_capture_takes_export_options_given_to_it(tmp_path: Path) -> None:
    """Options given to ``capture()`` itself still apply (a test of the embedded sink)."""
    store = tmp_path / "asked.duckdb"
    with capture(sink=str(store)):
        with supervised("stored.job"):
            pass
        assert _setup._setup is not None
        assert _setup._setup.sink is not None
    assert store.exists()


def test_a_capture_warns_when_the_sdk_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_SDK_DISABLED=true`` makes the SDK record nothing: the capture says why its
    spans are missing instead of failing assertions with no hint."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with pytest.warns(RuntimeWarning, match="OTEL_SDK_DISABLED"), capture():
        pass


@pytest.mark.parametrize("limits", ENV_LIMITS)
def test_the_sdk_limits_in_the_environment_do_not_cut_what_a_capture_holds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limits: dict[str, str]
) -> None:
    """A developer's ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` / ``OTEL_*ATTRIBUTE_COUNT_LIMIT``
    do not cut the capture's spans and log records, as they do not cut those of the
    providers ``configure()`` creates: the run id, name and a long metadata value come
    back whole. Before, the capture's providers read the limits: the span's run id was cut
    (``cap.run(id).span`` was None), the records' metadata was not JSON, and past the count
    the run id was gone; and configure() warned about the capture's own provider."""
    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    name = "billing.nightly.reconcile_invoices"
    file = "s3://bucket/exports/2024/06/" + "invoices-0001-" * 20 + ".csv"
    with caplog.at_level(logging.WARNING, logger="chaperone_otel"), capture() as cap:
        with supervised(name, queue="billing") as run:
            run.heartbeat(file=file)
        captured = cap.run(run.id)
        records = cap.log_records()
    assert captured.metadata == {"file": file}
    assert captured.span is not None
    span_attributes = dict(captured.span.attributes)
    assert span_attributes[sc.ATTR_JOB_RUN_ID] == run.id
    assert len(run.id) == 36  # a whole UUID
    assert span_attributes[sc.ATTR_JOB_NAME] == name
    assert span_attributes[sc.ATTR_JOB_QUEUE] == "billing"
    assert span_attributes[sc.ATTR_JOB_STATUS] == "completed"  # set last: not evicted
    attributes = [dict(r.log_record.attributes) for r in records]
    assert attributes
    assert all(a.get(sc.ATTR_JOB_RUN_ID) == run.id for a in attributes)
    assert all(a.get(sc.ATTR_JOB_NAME) == name for a in attributes)
    metadata = [json.loads(a[sc.ATTR_METADATA]) for a in attributes if sc.ATTR_METADATA in a]
    assert metadata
    assert metadata[-1] == {"file": file}
    assert not [r for r in caplog.records if "LoggerProvider" in r.getMessage()]


def test_a_capture_sees_the_schedules_declared_before_it_and_keeps_them() -> None:
    """A schedule declared at import (module level, before any test): each capture sees
    its declaration record, and the declaration outlives the capture's reset for the next
    test. Before, the capture listened only after configure() had published them again,
    and its reset forgot them for the rest of the session."""
    from chaperone_otel import reset, schedule
    from chaperone_otel import semconv as sc
    from chaperone_otel._schedule import declared

    reset()
    schedule("nightly.report", cron="0 3 * * *")
    try:
        for _ in range(2):  # two tests in a row
            with capture() as cap:
                names = [
                    r.attributes.get(sc.ATTR_SCHEDULE_NAME)
                    for r in cap.records
                    if r.event_name == sc.EVENT_SCHEDULE_DECLARED
                ]
                assert names == ["nightly.report"]
            assert [spec.name for spec in declared()] == ["nightly.report"]
    finally:
        reset()


def test_internal_errors_of_a_capture_are_its_own() -> None:
    """Errors swallowed before a capture started (another test, outside any capture) are
    not in its ``internal_errors()``."""
    from chaperone_otel._safety import record_internal_error

    record_internal_error("earlier.test", RuntimeError("not this capture's"))
    with capture(raise_internal_errors=False) as cap:
        assert cap.internal_errors() == {}


def test_configure_inside_a_capture_says_it_replaces_it() -> None:
    """``configure()`` in a test that uses the capture silently dropped it (its providers,
    clock and listener: the test then saw nothing); it warns, naming the way to pass
    options. Outside a capture, it does not."""
    import chaperone_otel

    with capture(), pytest.warns(RuntimeWarning, match="pass the options to capture"):
        chaperone_otel.configure()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chaperone_otel.configure()
    chaperone_otel.reset()


def test_a_capture_warns_about_a_run_it_leaves_running() -> None:
    """A run still running when its capture ends (its thread still working) outlives it:
    its finish went into the next capture as a run of another test, without a word. The
    capture's end names it; a run the test ended is not named, nor one that started
    before the capture."""
    release, started = threading.Event(), threading.Event()

    def work() -> None:
        with supervised("left.running"):
            started.set()
            release.wait(30)

    thread = threading.Thread(target=work)
    cap = Capture(background=False).start()
    thread.start()
    assert started.wait(10)
    with supervised("ended.in.test"):
        pass
    with pytest.warns(RuntimeWarning, match=r"1 run\(s\) still running.*left\.running") as seen:
        cap.stop()
    release.set()
    thread.join(10)
    assert "ended.in.test" not in str(seen[0].message)

    release.clear()
    started.clear()
    thread = threading.Thread(target=work)
    thread.start()  # before the capture: not its run
    assert started.wait(10)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with capture(background=False):
                pass
    finally:
        release.set()
        thread.join(10)
    from chaperone_otel import reset

    reset()


def test_a_start_that_raises_in_test_mode_leaves_no_live_run() -> None:
    """Where internal errors are raised (the capture's default), a listener failing on the
    ``started`` record fails the start; the run it never returned stayed live for ever, its
    span open, judged by the monitor for the rest of the test session."""
    from chaperone_otel._events import add_listener, remove_listener

    class Broken:
        def on_record(self, record: object) -> None:
            raise ValueError("broken listener")

    broken = Broken()
    with capture(background=False) as cap:
        add_listener(broken)
        try:
            with pytest.raises(ValueError, match="broken listener"), supervised("loud.start"):
                pass
        finally:
            remove_listener(broken)
        assert runtime().live_runs() == []
        assert [s.name for s in cap.spans()] == ["loud.start"]


def test_a_hook_failing_on_the_hooks_thread_fails_the_capture() -> None:
    """With the monitor and hooks on their threads (no fake clock), a hook that raised
    under the test switch ended the hooks thread with an unhandled-thread warning, and the
    test passed. The capture's end raises it; the hooks after it still ran."""
    from chaperone_otel.testing import InternalErrorInBackground

    calls: list[str] = []
    done = threading.Event()

    def on_complete(run: object) -> None:
        calls.append(getattr(run, "name", "?"))
        if len(calls) == 1:
            raise KeyError("hook bug")
        done.set()

    with pytest.raises(InternalErrorInBackground, match="KeyError") as info:  # noqa: PT012
        with capture(on_complete=on_complete):
            with supervised("first.job"):
                pass
            with supervised("second.job"):
                pass
            assert done.wait(10)
    assert isinstance(info.value.__cause__, KeyError)
    assert calls == ["first.job", "second.job"]
    with capture():  # the next capture starts clean
        pass
