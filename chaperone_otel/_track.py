"""``track()`` loops of one run, nested or not.

The outermost loop reports the run's progress, item by item, as ``report_progress`` would.
A loop inside it (``for f in track(files): for row in track(rows(f))``) fills the outer
loop's current item instead of replacing the run's progress with its own: 3 of 10 files
done and half of the fourth's rows is 3.5 of 10, not 500 of 1,000 rows, and the outer
count is not divided by the inner total after the inner loop ends. A nested loop without a
total cannot tell how far into the item it is; its items count as signs of life (as
``heartbeat()`` calls), so the run still does not look idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Frame = list[float | None]
"""A live loop's [items done, total or None]."""


class Tracked(Protocol):
    """What a loop touches of the run's handle (``_run.Supervision``, which imports this
    module: a protocol keeps the import one-way)."""

    _frames: list[Frame]
    _current: float | None
    _total: float | None
    _calls: int
    _cancel: Any

    def _raise_cancel(self) -> None: ...


def items(handle: Tracked, iterable: Iterable[T], total: float | None) -> Iterator[T]:
    """Yield ``iterable``'s items, reporting each done when the next is asked for (as tqdm
    does), as the outermost loop or inside the loops already running on ``handle``."""
    frames = handle._frames
    frame: Frame = [0, total]
    frames.append(frame)
    try:
        if len(frames) == 1:  # the common case: as cheap as it was without nesting
            handle._current = 0
            handle._total = total
            for count, item in enumerate(iterable, 1):
                yield item
                handle._current = frame[0] = count
                if handle._cancel is not None:
                    handle._raise_cancel()
        else:
            for count, item in enumerate(iterable, 1):
                yield item
                frame[0] = count
                _fill(handle, frames)
                if handle._cancel is not None:
                    handle._raise_cancel()
    finally:
        for i in range(len(frames) - 1, -1, -1):  # by identity: two frames may be equal
            if frames[i] is frame:
                del frames[i]
                break


def _fill(handle: Tracked, frames: list[Frame]) -> None:
    """The run's progress from the nested loops: the outermost loop's count plus how far
    the loops inside it are into its current item."""
    share = 0.0
    unknown = False
    for done, total in reversed(frames[1:]):
        if not total:
            share, unknown = 0.0, True
        else:
            share = min(1.0, (float(done or 0) + share) / total)
    done, total = frames[0]
    handle._current = float(done or 0) + share
    handle._total = total
    if unknown:
        handle._calls += 1
