"""The example gateway's setting of Python's cyclic garbage collector
(``GATEWAY_GC_THRESHOLDS``), applied while the app runs.

A full (generation-2) collection walks every container object the process holds and stops
the event loop while it does: with 20,000 open WebSockets (about 90 such objects each,
nearly two million in all) one pause lasts more than a second (density benchmark,
``DENSITY_GC_LOG=1``: 1.4 s at 19,744 sockets). With Python's thresholds (700, 10, 10) the
collector runs one each time the long-lived objects grew by a quarter: 13 pauses, 7.8 s in
all, while 20,000 sockets connected, long enough for calls to Redis to miss their
deadline (``unavailable`` answers to subscribes), and one landing on a broadcast delayed it
by as long. With (10000, 10, 100), the default here, the same benchmark saw none until
shutdown; young objects are collected as before, and cyclic garbage that outlived two
young collections waits longer for a full one (a little more memory held between them).

``GATEWAY_GC_THRESHOLDS``: three integers for :func:`gc.set_threshold` (default
``10000,10,100``) or ``off`` (Python's own). The previous thresholds are restored when the
app's lifespan ends (unless they were changed meanwhile).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping

__all__ = ["DEFAULT_THRESHOLDS", "collector_thresholds", "tuned_collector"]

DEFAULT_THRESHOLDS = (10_000, 10, 100)


def collector_thresholds(env: Mapping[str, str]) -> tuple[int, int, int] | None:
    """The thresholds ``GATEWAY_GC_THRESHOLDS`` asks for; None for ``off``."""
    raw = env.get("GATEWAY_GC_THRESHOLDS", "").strip()
    if not raw:
        return DEFAULT_THRESHOLDS
    if raw.lower() == "off":
        return None
    parts = raw.split(",")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ValueError(
            f"GATEWAY_GC_THRESHOLDS must be three positive integers (e.g. 10000,10,100) "
            f"or 'off', not {raw!r}"
        )
    return values[0], values[1], values[2]


@contextlib.contextmanager
def tuned_collector(thresholds: tuple[int, int, int] | None) -> Iterator[None]:
    """Set the collector's thresholds (None: leave them) until the block ends."""
    if thresholds is None:
        yield
        return
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        if gc.get_threshold() == thresholds:  # else changed since (another app's ended first)
            gc.set_threshold(*before)
