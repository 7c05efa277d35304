"""What the tests that run real interpreters share."""

from __future__ import annotations

import os

CLEAN_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHAPERONE_OTEL_"))
}
"""The environment for a child interpreter: none of the developer's or CI's ``OTEL_*`` or
``CHAPERONE_OTEL_*`` settings, which would send its telemetry elsewhere."""
