"""The ``Supervised`` base class: class-based jobs, the Python form of Chaperone's contract.

Subclassing wraps the class's own ``run()`` so that calling it is one supervised run
(through ``_lifecycle``, like the decorator), with a ``supervision_id`` fixed per object
and an attempt number that counts its calls.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

from ._config import LimitPolicy
from ._current import current_run, report_progress
from ._lifecycle import acall, call, start_run
from ._run import Run, Supervision
from ._spec import Lease, Spec, make_spec, qualified_name
from .exceptions import ConfigurationError

T = TypeVar("T")


class Supervised:
    """Base class for class-based jobs, the Python form of Chaperone's ``Supervised`` contract.

    Subclass it and implement ``run()`` (sync or ``async``). Calling ``run()`` supervises the
    call; inside it, ``self.heartbeat()`` and ``self.report_progress()`` act on that run. The
    ``supervision_id`` is fixed when the object is created, so a test or a caller can look
    the run up afterwards; calling ``run()`` again on the same object is the next attempt of
    the same id.

    Class attributes configure the runs: ``job_name``, ``queue``, ``heartbeat_interval``,
    ``timeout``, ``stall_timeout``, ``memory_limit``, ``cpu_limit``, ``fd_limit``,
    ``on_limit``, ``lease``, ``schedule`` (the schedule the runs belong to: its name, or
    what ``chaperone_otel.schedule()`` returned, as ``@supervised(schedule=...)`` takes).

    Example::

        class ProcessDataset(Supervised):
            heartbeat_interval = 30

            def run(self, path):
                rows = read(path)
                for i, row in enumerate(rows, 1):
                    handle(row)
                    self.report_progress(i, len(rows))

    .. versionadded:: 0.1
    """

    job_name: ClassVar[str | None] = None
    queue: ClassVar[str | None] = None
    heartbeat_interval: ClassVar[float | None] = None
    timeout: ClassVar[Any] = None
    stall_timeout: ClassVar[Any] = None
    memory_limit: ClassVar[Any] = None
    cpu_limit: ClassVar[float | None] = None
    fd_limit: ClassVar[int | None] = None
    on_limit: ClassVar[LimitPolicy | None] = None
    lease: ClassVar[Lease | None] = None
    schedule: ClassVar[Any] = None

    _chaperone_spec: ClassVar[Spec]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._chaperone_spec = make_spec(
            cls.job_name or qualified_name(cls),
            queue=cls.queue,
            attempt=None,
            heartbeat_interval=cls.heartbeat_interval,
            timeout=cls.timeout,
            stall_timeout=cls.stall_timeout,
            memory_limit=cls.memory_limit,
            cpu_limit=cls.cpu_limit,
            fd_limit=cls.fd_limit,
            on_limit=cls.on_limit,
            supervision_id=None,
            attributes=None,
            hooks={},
            tracer_provider=None,
            lease=cls.lease,
            schedule=cls.schedule,
        )
        body = cls.__dict__.get("run")
        if body is None or getattr(body, "__chaperone_wrapped__", False):
            return
        if inspect.isgeneratorfunction(body) or inspect.isasyncgenfunction(body):
            # Its run would end when run() returns the generator, before any item.
            raise ConfigurationError(
                f"{cls.__qualname__}.run() is a generator: a Supervised run() must return "
                "when the job is done (a function or a coroutine); supervise a generator with "
                "@supervised on it instead"
            )
        # A subclass's run() that calls super().run() is inside this object's own run: the
        # parent's body is part of it, not a second run (which would look like a retry).
        if inspect.iscoroutinefunction(body):

            async def arun(self: Supervised, *args: Any, **kw: Any) -> Any:
                if self._in_own_run():
                    return await body(self, *args, **kw)
                return await acall(self._start(bind_thread=False), body, (self, *args), kw)

            wrapped: Callable[..., Any] = arun
        else:

            def srun(self: Supervised, *args: Any, **kw: Any) -> Any:
                if self._in_own_run():
                    return body(self, *args, **kw)
                return call(self._start(bind_thread=True), body, (self, *args), kw)

            wrapped = srun
        functools.update_wrapper(wrapped, body)
        wrapped.__chaperone_wrapped__ = True  # type: ignore[attr-defined]
        cls.run = wrapped  # type: ignore[method-assign]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The job's body; override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    @property
    def supervision_id(self) -> str:
        """This job's run id, fixed at creation (uuid4)."""
        sid: str | None = self.__dict__.get("_chaperone_id")
        if sid is None:
            sid = self.__dict__["_chaperone_id"] = str(uuid.uuid4())
        return sid

    def get_supervision_id(self) -> str:
        """Alias of :attr:`supervision_id` (the seed's ``getSupervisionId()``)."""
        return self.supervision_id

    def _start(self, *, bind_thread: bool) -> Run:
        run = start_run(
            self._chaperone_spec,
            run_id=self.supervision_id,
            attempt=self._next_attempt(),
            bind_thread=bind_thread,
        )
        self.__dict__["_chaperone_run"] = run.handle
        return run

    def _next_attempt(self) -> int:
        attempt: int = self.__dict__.get("_chaperone_attempts", 0) + 1
        self.__dict__["_chaperone_attempts"] = attempt
        return attempt

    @property
    def supervision(self) -> Supervision | None:
        """The handle of this object's latest run (None before ``run()``)."""
        run: Supervision | None = self.__dict__.get("_chaperone_run")
        return run

    def _in_own_run(self) -> bool:
        """True inside an unfinished run of this object, in the run's own thread or task.

        The current run is compared by id, not with the object's latest run: two calls of
        one object running at once (threads, ``asyncio.gather``) each have their own run,
        and the later one is the latest."""
        run: Supervision | None = current_run.get()
        return run is not None and run.finished_at is None and run.id == self.supervision_id

    def _active_run(self) -> Supervision | None:
        # The caller's own run first when it is one of this object's (they share its run
        # id): two run() calls at once (asyncio.gather) each report to their own, not both
        # to the latest.
        current = current_run.get()
        if current is not None and current.id == self.supervision_id:
            return current
        run: Supervision | None = self.__dict__.get("_chaperone_run")
        if run is not None and run.finished_at is None:
            return run
        return current

    def heartbeat(self, metadata: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Heartbeat this job's current run (no-op outside ``run()``)."""
        run = self._active_run()
        if run is not None:
            run.heartbeat(metadata, **fields)

    def report_progress(
        self,
        current: float,
        total: float,
        metadata: Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> None:
        """Report progress of this job's current run (validates even outside ``run()``)."""
        run = self._active_run()
        if run is None:
            report_progress(current, total, metadata, **fields)
            return
        run.report_progress(current, total, metadata, **fields)

    def track(self, iterable: Iterable[T], total: float | None = None) -> Iterator[T]:
        """:meth:`Supervision.track` on this job's current run."""
        run = self._active_run()
        return iter(iterable) if run is None else run.track(iterable, total)
