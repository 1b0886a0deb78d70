"""Helpers shared by the pub/sub tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway_redis.embedded import find_server_binary
from gateway_redis.pubsub import Message, Subscription


async def receive(sub: Subscription, timeout: float = 2.0) -> Message:
    return await asyncio.wait_for(anext(sub), timeout)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def redis_cli(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        find_server_binary("cli"), "-h", "127.0.0.1", "-p", str(port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err
    return out.decode().strip()
