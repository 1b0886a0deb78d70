"""Deadlines: the hard time limit every Redis call runs under (:class:`Deadline`), and
:func:`wait_attentively`, a time limit that counts only the time the event loop could
spend on the wait (for verdicts such as "the server is dead").

Deadlines of one length on one event loop share a timer queue (:class:`_Queue`), so
starting and ending one is an append and a flag, not a timer handle on the loop's heap.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Deadline", "wait_attentively"]

T = TypeVar("T")
_SLICES = 8  # a wait of `seconds` is watched in this many steps (see wait_attentively)

_RECANCEL = 0.05  # seconds between cancellations once a deadline has passed

_running_loop = asyncio.get_running_loop
if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # C since 3.12
else:  # asyncio.current_task() is Python code that ends in this dict lookup
    _current_task = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


class _Queue:
    """The running deadlines of one length on one event loop, oldest first.

    A deadline that starts later ends later (the loop's clock is monotonic), so a FIFO
    queue is in expiry order and one timer, armed for the oldest entry, serves them all.
    Starting a deadline is an append (:meth:`Deadline.start`) and ending one sets a flag:
    no timer handle is pushed on the loop's heap and cancelled again per call.
    """

    __slots__ = ("_clock", "_entries", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # asyncio's own loops tell time.monotonic() through a Python method: skip it
        self._clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self._entries: collections.deque[Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def _expire(self) -> None:
        self._timer = None
        entries, now = self._entries, self._clock()
        while entries:
            entry = entries[0]
            if entry._done:
                entries.popleft()
            elif entry._when <= now:
                entries.popleft()
                step = entry._seconds / _SLICES
                if now - entry._when > step:
                    # The loop was stalled past the deadline (a long callback, a collector
                    # pause, a flood of handshakes): the answer may be in a socket buffer,
                    # its reader run just now. Give it one step before cancelling.
                    entry._stalled = True
                    entry._handle = self._loop.call_at(now + step, entry._fire)
                else:
                    entry._fire()
            else:
                self._timer = self._loop.call_at(entry._when, self._expire)
                return


# Per event loop: deadline length -> queue. The last loop's map is cached (weakly), as one
# tuple so that loops running in other threads never see a loop paired with another's map.
_QUEUES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Queue]] = (
    weakref.WeakKeyDictionary()
)
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], dict[float, _Queue]] | None = None


def _queue(loop: asyncio.AbstractEventLoop, seconds: float) -> _Queue:
    global _last
    last = _last
    if last is not None and last[0]() is loop:
        queues = last[1]
    else:
        queues = _QUEUES.setdefault(loop, {})
        _last = (weakref.ref(loop), queues)
    queue = queues.get(seconds)
    if queue is None:
        queue = queues[seconds] = _Queue(loop)
    return queue


class Deadline:
    """``async with Deadline(seconds):`` -- like :func:`asyncio.timeout`, but insistent.

    redis-py sometimes swallows a cancellation (``asyncio.wait_for`` on Python 3.11 drops
    one that arrives as its inner operation completes, and connection cleanup can catch
    it), after which the call carries on through further socket timeouts and retries:
    measured, a 0.5 s deadline ended after 3.6 s. This one keeps cancelling every 50 ms
    until the block has exited, then raises :class:`asyncio.TimeoutError`. A cancellation
    from outside that arrives meanwhile is passed on, not turned into a timeout. It is
    also cheaper than ``asyncio.timeout``: deadlines of the same length share one timer
    (see :class:`_Queue`), which matters when every Redis call has one.

    A deadline counts wall-clock time, but not a stall of the loop at its very end: when
    its timer runs more than an eighth of the deadline late, the reply may have arrived
    during the stall and be unread. The block then gets one more eighth (one loop
    iteration at least, in which the readers run) before it is cancelled, and
    :attr:`stalled` says so.
    """

    __slots__ = (
        "_cancelling",
        "_done",
        "_fired",
        "_handle",
        "_loop",
        "_seconds",
        "_stalled",
        "_task",
        "_when",
    )

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._fired = 0
        self._done = False
        self._stalled = False
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Deadline:
        return self.start()

    def start(self) -> Deadline:
        """Start the clock (what ``async with`` does on entry); returns self.

        ``start()`` and :meth:`end` are for the one hot path that cannot afford the two
        coroutines of ``async with``; everything else should use ``async with``.
        """
        loop = self._loop = _running_loop()
        task = _current_task(loop)
        if task is None:  # pragma: no cover - always inside a task
            raise RuntimeError("Deadline() must be used inside a task")
        self._task = task
        self._cancelling = 0
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        # Join the queue of deadlines of this length (inlined: this runs on every call).
        last = _last
        queue = last[1].get(self._seconds) if last is not None and last[0]() is loop else None
        if queue is None:
            queue = _queue(loop, self._seconds)
        when = self._when = queue._clock() + self._seconds
        entries = queue._entries
        while entries and entries[0]._done:  # calls that have ended since
            entries.popleft()
        entries.append(self)
        if queue._timer is None:
            queue._timer = loop.call_at(when, queue._expire)
        return self

    def _fire(self) -> None:
        if self._done:
            return
        self._fired += 1
        self._task.cancel()
        self._handle = self._loop.call_at(self._loop.time() + _RECANCEL, self._fire)

    @property
    def expired(self) -> bool:
        """Whether the deadline passed while the block ran."""
        return self._fired > 0

    @property
    def stalled(self) -> bool:
        """Whether the event loop was stalled when the deadline passed (its timer ran more
        than an eighth of the deadline late): the block then had that eighth more, and a
        timeout says at least as much about this process as about the server."""
        return self._stalled

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        self.end(exc)

    def end(self, exc: BaseException | None) -> None:
        """Stop the clock (what ``async with`` does on exit, ``exc`` being what the block
        raised): raises :class:`asyncio.TimeoutError` if the deadline passed meanwhile,
        unless a cancellation from outside is on its way."""
        self._done = True
        if not self._fired:
            if self._handle is not None:  # ended within the grace of a stalled loop
                self._handle.cancel()
            return
        if self._handle is not None:
            self._handle.cancel()
        if sys.version_info >= (3, 11):
            for _ in range(self._fired):
                self._task.uncancel()
            if self._task.cancelling() > self._cancelling:
                return  # someone else cancelled too: let their CancelledError through
        raise asyncio.TimeoutError(f"deadline of {self._seconds}s exceeded") from exc


async def wait_attentively(awaitable: Awaitable[T], seconds: float) -> T:
    """The result of ``awaitable``; raises :class:`asyncio.TimeoutError` once it has had
    ``seconds`` of the event loop's attention without finishing.

    A :class:`Deadline` counts wall-clock time: when our own loop is busy (a callback that
    blocks, thousands of handshakes at once), an answer can sit unread in a socket buffer
    past the deadline, and the verdict "no answer" would be ours, not the server's. Here
    the wait is watched in steps of ``seconds / 8``; a step that ends late (the loop was
    busy) counts as one step, not as the time it took. So an idle loop times out after
    ``seconds`` as usual, and a busy one only after eight steps in which the loop ran and
    the answer still was not there. On a timeout, and when the wait itself is cancelled, a
    coroutine's task is cancelled until it has ended (insistently, like :class:`Deadline`:
    redis-py can swallow a cancellation), so nothing it does outlives the wait; a future is
    cancelled.
    """
    loop = _running_loop()
    future = asyncio.ensure_future(awaitable)
    step = seconds / _SLICES
    counted = 0.0
    try:
        while True:
            started = loop.time()
            await asyncio.wait((future,), timeout=min(step, seconds - counted))
            if future.done():
                return future.result()
            counted += min(loop.time() - started, step)
            if counted >= seconds * (1 - 1e-9):
                break
    except asyncio.CancelledError:
        await _end(future)
        raise
    if await _end(future):
        raise asyncio.CancelledError
    raise asyncio.TimeoutError(f"no answer within {seconds}s of the loop's attention")


async def _end(future: asyncio.Future[T]) -> bool:
    """Cancel ``future`` until it has ended, even while the caller is cancelled again (a
    closing client cancels its tasks repeatedly); True if the caller was."""
    cancelled = False
    while not future.done():
        future.cancel()
        try:
            await asyncio.wait((future,), timeout=_RECANCEL)
        except asyncio.CancelledError:
            cancelled = True
    if not future.cancelled():
        future.exception()  # retrieved: what it raised while being cancelled is moot
    return cancelled
