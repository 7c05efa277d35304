"""``python -m chaperone_otel.cli`` (same as the ``chaperone-otel`` console script)."""

from . import main

main()
