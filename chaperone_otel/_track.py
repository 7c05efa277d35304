"""``track()`` loops of one run, nested or not.

The outermost loop reports the run's progress, item by item, as ``report_progress`` would.
A loop inside it (``for f in track(files): for row in track(rows(f))``) fills the outer
loop's current item instead of replacing the run's progress with its own: 3 of 10 files
done and half of the fourth's rows is 3.5 of 10, not 500 of 1,000 rows, and the outer
count is not divided by the inner total after the inner loop ends. A nested loop without a
total cannot tell how far into the item it is; its items count as signs of life (as
``heartbeat()`` calls), so the run still does not look idle.

A loop nests only in the loops of its own thread or asyncio task. Loops of one run that
run at once in several threads or tasks (``asyncio.gather`` of workers, each tracking its
share) add up: the run's progress is their items done over their totals together, and a
loop that ends before the others keeps its share until the last one ends. (One shared
stack made the second loop "nested" in the first: 100 % when the first ended, then back
to 54 %.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Frame = list[Any]
"""A live loop's [items done, total or None, its thread and task]; or, first in the list,
the [items done, total, None] of the loops that ended while others of the run still ran."""


class Tracked(Protocol):
    """What a loop touches of the run's handle (``_run.Supervision``, which imports this
    module: a protocol keeps the import one-way)."""

    _frames: list[Frame]
    _current: float | None
    _total: float | None
    _calls: int
    _cancel: Any

    def _raise_cancel(self) -> None: ...


def _owner() -> tuple[int, int]:
    """The calling thread and asyncio task: the loops a new loop may be nested in."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    return threading.get_ident(), id(task) if task is not None else 0


def items(handle: Tracked, iterable: Iterable[T], total: float | None) -> Iterator[T]:
    """Yield ``iterable``'s items, reporting each done when the next is asked for (as tqdm
    does), as the outermost loop or inside the loops already running on ``handle``."""
    frames = handle._frames
    frame: Frame = [0, total, _owner()]
    frames.append(frame)
    try:
        if len(frames) == 1:
            handle._current = 0
            handle._total = total
        for count, item in enumerate(iterable, 1):
            yield item
            frame[0] = count
            if len(frames) == 1:  # the common case: as cheap as it was without nesting
                handle._current = count
            else:
                _fill(handle, frames)
            if handle._cancel is not None:
                handle._raise_cancel()
    finally:
        _end(frames, frame)


def _end(frames: list[Frame], frame: Frame) -> None:
    """Take ``frame`` off; an outermost loop of its thread or task that ends while loops of
    others still run leaves its items and total in the ended loops' share (first in
    ``frames``), which goes once no loop is left."""
    index = next((i for i, f in enumerate(frames) if f is frame), None)  # by identity
    if index is None:
        return
    del frames[index]
    owner = frame[2]
    outermost = not any(f[2] == owner for f in frames[:index])
    live = [f for f in frames if f[2] is not None]
    if outermost and live and frame[1]:
        if frames[0][2] is not None:
            frames.insert(0, [0, 0.0, None])
        frames[0][0] += frame[0]
        frames[0][1] += frame[1]
    if not live and frames:
        frames.clear()  # only the ended loops' share was left


def _fill(handle: Tracked, frames: list[Frame]) -> None:
    """The run's progress from its live loops: per thread or task, the outermost loop's
    count plus how far the loops inside it are into its current item; summed over threads
    and tasks (with the loops that ended meanwhile), over their totals summed."""
    chains: dict[Any, list[Frame]] = {}
    for f in frames:
        chains.setdefault(f[2], []).append(f)
    done_sum, total_sum = 0.0, 0.0
    unknown = total_unknown = False
    for owner, chain in chains.items():
        if owner is None:  # the loops that ended
            done_sum += chain[0][0]
            total_sum += chain[0][1]
            continue
        share = 0.0
        for done, total, _ in reversed(chain[1:]):
            if not total:
                share, unknown = 0.0, True
            else:
                share = min(1.0, (float(done or 0) + share) / total)
        done, total, _ = chain[0]
        done_sum += float(done or 0) + share
        if total:
            total_sum += total
        else:
            total_unknown = True
    handle._current = done_sum
    handle._total = None if total_unknown else total_sum
    if unknown:
        handle._calls += 1
