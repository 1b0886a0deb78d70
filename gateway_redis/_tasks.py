"""Ending background tasks for sure."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Task[Any], interval: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    A task is cancelled again every ``interval`` seconds while it runs: redis-py can
    swallow a cancellation that lands inside a call (``asyncio.wait_for`` on Python 3.11,
    connection cleanup), and a single ``cancel()`` then leaves ``await task`` hanging.
    The tasks' own exceptions are not raised here; read them with ``task.exception()``.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=interval)
