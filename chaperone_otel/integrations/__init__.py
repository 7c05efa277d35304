"""Task-framework integrations, one public module each; none is imported by the package.

* :mod:`chaperone_otel.integrations.celery`: ``instrument(app)`` supervises a Celery app's
  tasks.

Each module imports its framework when it is imported itself, and says how to install it
when the framework is missing.
"""

__all__: list[str] = []
