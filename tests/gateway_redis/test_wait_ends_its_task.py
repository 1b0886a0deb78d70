"""A probe's wait (``wait_attentively``) that is cancelled, as a closing client cancels its
health monitor, ends the task it waits on before it returns, even when that task swallows
a cancellation (redis-py can). Before, the task lived on: a probe retrying on a fresh
connection after the client had closed its connections left that connection open (seen
as an unclosed ``StreamWriter`` after a Sentinel test)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway_redis._driver import wait_attentively
from gateway_redis.support import cancel_and_wait


class Stubborn:
    """A task that swallows every cancellation until :meth:`release`."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.released = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self.released.is_set():
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                self.steps.append("swallowed")
        self.steps.append("ended")

    async def swallowed(self) -> None:
        for _ in range(500):
            if self.steps:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("never cancelled")


@pytest.mark.parametrize("again", [False, True], ids=["cancelled once", "cancelled repeatedly"])
async def test_a_cancelled_wait_returns_once_its_task_has_ended(again: bool) -> None:
    inner = Stubborn()
    waiting = asyncio.ensure_future(wait_attentively(inner.task, 5.0))
    await asyncio.sleep(0.01)
    # the health monitor's close cancels again every 0.1 s until its task has ended
    closing = asyncio.ensure_future(cancel_and_wait(waiting) if again else _cancel(waiting))
    try:
        await inner.swallowed()
        await asyncio.sleep(0.2)
        assert not waiting.done()  # still ending its task
    finally:
        inner.released.set()
    await asyncio.wait_for(closing, 5)
    assert waiting.cancelled()
    assert inner.steps[-1] == "ended"


async def test_a_wait_cancelled_while_ending_its_task_after_a_timeout_is_cancelled() -> None:
    inner = Stubborn()
    waiting = asyncio.ensure_future(wait_attentively(inner.task, 0.05))
    try:
        await inner.swallowed()  # timed out: the task is being cancelled
    except BaseException:
        inner.released.set()
        raise
    closing = asyncio.ensure_future(cancel_and_wait(waiting))
    try:
        await asyncio.sleep(0.2)
        assert not waiting.done()
    finally:
        inner.released.set()
    await asyncio.wait_for(closing, 5)
    assert waiting.cancelled()
    assert inner.steps[-1] == "ended"


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
