"""One computation per key at a time on this instance: :class:`Flights` (private).

The first request for a missing key leads (:meth:`Flights.lead`); the others for the same
key wait for its result (:meth:`Flights.follow`), at most ``max_waiters`` of them over all
keys and each for at most ``timeout`` seconds: a request beyond either bound computes its
own response. The leader always ends its flight (:meth:`Flights.finish`, in a ``finally``),
with None when it has nothing to share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Flights"]

T = TypeVar("T")


class Flights(Generic[T]):
    """Computations in flight by key; see the module docstring."""

    __slots__ = ("_flights", "_max_waiters", "_timeout", "_waiting")

    def __init__(self, *, max_waiters: int, timeout: float) -> None:
        self._flights: dict[Hashable, asyncio.Future[T | None]] = {}
        self._max_waiters = max_waiters
        self._timeout = timeout
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests waiting now, over all keys."""
        return self._waiting

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def lead(self, key: Hashable) -> asyncio.Future[T | None] | None:
        """Start the flight of ``key`` and return its future, or None when one is in flight."""
        if key in self._flights:
            return None
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return future

    async def follow(self, key: Hashable) -> tuple[bool, T | None]:
        """Wait for the flight of ``key``: ``(True, result)``, or ``(False, None)`` when
        there is none, the waiters are too many or the wait timed out."""
        future = self._flights.get(key)
        if future is None or self._waiting >= self._max_waiters:
            return False, None
        self._waiting += 1
        try:
            return True, await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except asyncio.TimeoutError:
            return False, None
        finally:
            self._waiting -= 1

    def finish(self, key: Hashable, future: asyncio.Future[T | None], result: T | None) -> None:
        """End the flight that :meth:`lead` returned ``future`` for, sharing ``result``."""
        if self._flights.get(key) is future:
            del self._flights[key]
        if not future.done():
            future.set_result(result)
