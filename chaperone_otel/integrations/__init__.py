"""Task-framework integrations, one public module each; none is imported by the package.

* :mod:`chaperone_otel.integrations.celery`: ``instrument(app)`` supervises a Celery app's
  tasks.
* :mod:`chaperone_otel.integrations.rq`: ``SupervisedWorker``, an RQ worker class that
  supervises each job in its work-horse.
* :mod:`chaperone_otel.integrations.dramatiq`: ``instrument(broker)`` adds a middleware
  that supervises each message an actor processes.

Each module imports its framework when it is imported itself, and says how to install it
when the framework is missing (the extras ``chaperone-otel[celery]``, ``[rq]``,
``[dramatiq]``), or which version is installed and which it needs when it is too old
(``_framework.py``).
"""

__all__: list[str] = []
