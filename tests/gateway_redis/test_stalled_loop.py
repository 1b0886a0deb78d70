"""A stalled event loop is no verdict on Redis.

When our own loop stops for a while (a callback that blocks, a garbage-collector pause,
thousands of WebSocket handshakes at once), a reply can arrive during the stall and sit
unread in a socket buffer while the call's deadline passes. Measured with 20,000 sockets
connecting to one gateway: deadlines passed with the reply unread, a probe timed out the
same way, and the client declared Redis down, failing every subscribe for a while. Here
the loop is stalled on purpose (``time.sleep`` on the loop) with the reply on its way:
the call gets it, the probe gets it, and the client stays up. A server that really does
not answer still fails the call, an eighth of its deadline later at most.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis

from gateway_redis import HealthState, RedisClient, RedisConfig, RedisUnavailable
from gateway_redis._driver import Deadline
from gateway_redis.embedded import EmbeddedRedis


async def _reply_during_a_stall(deadline: float, stall: float) -> tuple[bytes, Deadline]:
    """Wait for a reply under ``Deadline(deadline)``; a callback sends the reply and then
    blocks the loop for ``stall`` seconds (more than the deadline)."""
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)

        def answer_then_stall() -> None:
            theirs.sendall(b"+PONG\r\n")
            time.sleep(stall)

        asyncio.get_running_loop().call_later(0.01, answer_then_stall)
        async with Deadline(deadline) as timer:
            line = await reader.readline()
        writer.close()
        return line, timer
    finally:
        theirs.close()


def _changes_of(client: RedisClient) -> list[tuple[HealthState, str]]:
    """The client's health changes from now on."""
    changes: list[tuple[HealthState, str]] = []
    client.add_state_listener(lambda state, reason: changes.append((state, reason)))
    return changes


async def test_a_reply_that_came_during_a_stall_past_the_deadline_is_read() -> None:
    line, timer = await _reply_during_a_stall(deadline=0.1, stall=0.3)
    assert line == b"+PONG\r\n"
    assert timer.stalled
    assert not timer.expired


async def test_a_stall_grants_one_eighth_more_not_an_unbounded_wait() -> None:
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
        asyncio.get_running_loop().call_later(0.01, time.sleep, 0.3)
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            async with Deadline(0.1) as timer:
                await reader.readline()  # nothing ever comes
        took = time.perf_counter() - started
        writer.close()
    finally:
        theirs.close()
    assert timer.stalled
    assert timer.expired
    assert took >= 0.3 + 0.1 / 8  # the stall, then the grace
    assert took < 2.0  # loose: the machine may be busy, but the wait ends


async def test_a_deadline_on_an_attentive_loop_is_not_stalled() -> None:
    with pytest.raises(asyncio.TimeoutError):
        async with Deadline(0.05) as timer:
            await asyncio.sleep(1)
    assert timer.expired
    assert not timer.stalled


async def test_a_call_whose_reply_came_during_a_stall_succeeds_and_redis_stays_up(
    redis_server: EmbeddedRedis,
) -> None:
    config = RedisConfig(url=redis_server.url, operation_timeout=0.2, probe_interval=0.05)
    async with RedisClient(config) as c:
        await c.set("stalled", "value")
        changes = _changes_of(c)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            # Runs once the call has sent GET and waits for the reply.
            loop.call_soon(time.sleep, 0.5)
            assert await c.get("stalled") == b"value"
        await asyncio.sleep(0.2)  # probes run (every 0.05 s while judging)
        assert changes == []
        assert c.health is HealthState.UP


async def test_a_probe_whose_answer_came_during_a_stall_succeeds(
    redis_server: EmbeddedRedis,
) -> None:
    config = RedisConfig(url=redis_server.url, probe_interval=0.1, dial_timeout=0.1)
    async with RedisClient(config) as c:
        await c.backend.probe()  # its connection is open
        loop = asyncio.get_running_loop()
        for _ in range(3):
            probe = asyncio.ensure_future(c.backend.probe())
            # Runs right after the probe's first step, which starts its time limit (and,
            # without a task of its own, sends ROLE): four times the probe's limit.
            loop.call_soon(time.sleep, 0.4)
            assert await probe is False


async def test_a_server_that_does_not_answer_still_fails_the_call(
    fault_server: EmbeddedRedis,
) -> None:
    config = RedisConfig(url=fault_server.url, operation_timeout=0.2, probe_interval=0.05)
    async with RedisClient(config) as c:
        await c.set("k", "v")
        fault_server.freeze()
        try:
            started = time.perf_counter()
            with pytest.raises(RedisUnavailable):
                await c.get("k")
            assert time.perf_counter() - started < 1.0
            deadline = time.perf_counter() + 5.0
            while c.health is not HealthState.DOWN:
                assert time.perf_counter() < deadline, "a frozen server never went down"
                await asyncio.sleep(0.02)
        finally:
            fault_server.thaw()


async def test_a_passed_deadline_alone_does_not_take_the_client_down(
    redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    """A call misses its deadline while Redis holds every command for 0.3 s (``CLIENT
    PAUSE``; from the client's side, the same as a loop too busy to read the reply): the
    call fails, the probe it asks for gets its answer within its own time limit (1 s), and
    the client never goes down."""
    config = RedisConfig(url=redis_server.url, operation_timeout=0.1)
    async with RedisClient(config) as c:
        await c.set("paused", "value")
        changes = _changes_of(c)
        redis_admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
        with pytest.raises(RedisUnavailable):
            await c.get("paused")
        await asyncio.sleep(0.6)  # the pause ends; the probe has had its answer
        assert changes == []
        assert await c.get("paused") == b"value"
