"""Stored text made safe to print on a terminal.

Job names, queues, ids, metadata and error messages are whatever the application gave, and a
terminal acts on some characters instead of showing them: ESC starts a sequence that changes
colours or moves the cursor, a line break splits a run's table line in two, a bidi override
(U+202E) shows the rest of the line reversed. The text renderers pass every such value
through :func:`terminal_safe`, which writes those characters as visible escapes; ``--json``
and ``--csv`` keep the exact values.
"""

from __future__ import annotations

from itertools import chain
from typing import Final

_NAMED: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

_BIDI: Final = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""Arabic letter mark, LRM/RLM, the embeddings and overrides, the isolates."""

_ESCAPES: Final[dict[int, str]] = {
    **{c: f"\\x{c:02x}" for c in chain(range(0x20), (0x7F,), range(0x80, 0xA0))},
    **{ord(c): text for c, text in _NAMED.items()},
    **{c: f"\\u{c:04x}" for c in _BIDI},
}
"""C0 controls (tab and line breaks too), DEL, C1 controls and the bidi controls, each as
the escape Python writes for it (``\\x1b``, ``\\n``, ``\\u202e``)."""


def terminal_safe(text: str) -> str:
    """``text`` with every control character (C0 including tab and newline, DEL, C1) and
    every bidi control shown as a visible escape; all else, ``导入`` included, unchanged.

    One line in, one line out: a value never spans two lines of a table.
    """
    if text.isprintable():  # none of them is printable: the common case costs one scan
        return text
    return text.translate(_ESCAPES)


def terminal_safe_lines(text: str) -> str:
    """``text`` made safe line by line, its line breaks kept: for the blocks that show a
    value over several lines (a traceback, a multi-line value in ``sql -x``)."""
    return "\n".join(terminal_safe(line) for line in text.split("\n"))
