"""The driver pieces on the per-call path: deadline, no_retry, GatewayRetry, GatewayPool.

Their fast paths skip redis-py machinery (a timer per call, the pool's wait condition),
so these tests pin down what must not change: deadlines fire on time, in order and
insistently; commands inside ``no_retry`` are sent once; the pool's cap, FIFO order of
waiters and bounded waits hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator

import pytest
import redis
from redis import exceptions as rexc
from redis.asyncio.connection import BlockingConnectionPool, Connection
from redis.backoff import NoBackoff

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable, _driver
from gateway_redis._driver import (
    Deadline,
    GatewayPool,
    GatewayRetry,
    PoolExhausted,
    disable_retries,
    no_retry,
    restore_retries,
    retries_disabled,
)
from gateway_redis.embedded import EmbeddedRedis

# -- deadline -------------------------------------------------------------------------


async def test_deadline_ends_a_block_with_timeout_error() -> None:
    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        async with Deadline(0.05) as d:
            await asyncio.sleep(1)
    assert 0.045 <= time.perf_counter() - started < 0.2
    assert d.expired


async def test_a_block_that_ends_in_time_is_untouched() -> None:
    async with Deadline(0.05) as d:
        await asyncio.sleep(0)
    assert not d.expired
    await asyncio.sleep(0.1)  # its expiry passes after the block: nothing is cancelled


async def test_many_deadlines_of_one_length_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    for _ in range(1000):
        async with Deadline(30.0):
            pass
    # asyncio.timeout() would leave 1000 cancelled handles on the heap until they expire.
    assert len(loop._scheduled) <= scheduled + 1  # type: ignore[attr-defined]


async def test_each_deadline_fires_at_its_own_time_behind_finished_ones() -> None:
    """The shared timer is armed for the oldest entry; a later one still fires on time."""
    async with Deadline(0.2):
        pass  # ends at once; the queue's timer stays armed for its expiry
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        async with Deadline(0.2):
            await asyncio.sleep(2)
    assert 0.19 <= time.perf_counter() - started < 0.35


async def test_concurrent_deadlines_each_fire_after_their_own_length() -> None:
    async def late(start_delay: float) -> float:
        await asyncio.sleep(start_delay)
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            async with Deadline(0.2):
                await asyncio.sleep(2)
        return time.perf_counter() - started

    async def quick() -> None:
        for _ in range(20):
            async with Deadline(0.2):
                await asyncio.sleep(0.01)

    *waited, _ = await asyncio.gather(late(0), late(0.05), late(0.1), quick())
    for w in waited:
        assert 0.19 <= w < 0.35, waited


async def test_deadlines_of_different_lengths_and_nested_ones() -> None:
    outer_started = time.perf_counter()
    async with Deadline(1.0) as outer:
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            async with Deadline(0.05):
                await asyncio.sleep(5)
        assert time.perf_counter() - started < 0.2
        await asyncio.sleep(0)
    assert not outer.expired
    assert time.perf_counter() - outer_started < 0.5


async def test_deadline_keeps_cancelling_a_block_that_swallows_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        async with Deadline(0.05):
            for _ in range(3):
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    swallowed += 1  # what redis-py sometimes does

    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        await stubborn()
    assert swallowed == 3
    # 0.05 s, then a re-cancel every 50 ms: ~0.15 s, far from the 15 s of sleeps.
    assert time.perf_counter() - started < 0.5


async def test_outside_cancellation_is_passed_on_not_turned_into_timeout() -> None:
    async def body() -> None:
        async with Deadline(5.0):
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
async def test_outside_cancellation_during_a_fired_deadline_wins() -> None:
    async def body() -> None:
        async with Deadline(0.05):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)  # swallowed: the deadline re-cancels
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.07)  # the deadline has fired once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_deadlines_work_across_event_loops() -> None:
    async def once() -> None:
        with pytest.raises(asyncio.TimeoutError):
            async with Deadline(0.02):
                await asyncio.sleep(1)
        async with Deadline(0.02):
            pass

    asyncio.run(once())
    asyncio.run(once())


def test_deadlines_in_loops_of_several_threads() -> None:
    async def work() -> float:
        for _ in range(2000):
            async with Deadline(0.05):
                await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            async with Deadline(0.05):
                await asyncio.sleep(1)
        return time.perf_counter() - started

    results: list[float] = []
    threads = [
        threading.Thread(target=lambda: results.append(asyncio.run(work()))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 3
    assert all(0.045 <= r < 0.5 for r in results), results


# -- no_retry and GatewayRetry ---------------------------------------------------------


async def test_no_retry_sets_and_restores_the_flag() -> None:
    assert not _driver.retry._NO_RETRY.get()
    with no_retry():
        assert _driver.retry._NO_RETRY.get()
        with no_retry():
            assert _driver.retry._NO_RETRY.get()
        assert _driver.retry._NO_RETRY.get()
    assert not _driver.retry._NO_RETRY.get()
    with pytest.raises(ValueError, match="inside"), no_retry():
        raise ValueError("inside")
    assert not _driver.retry._NO_RETRY.get()


async def test_retries_switched_off_by_the_client_are_seen_by_the_retry_policy() -> None:
    retry = GatewayRetry(NoBackoff(), 3)
    token = disable_retries()  # what RedisClient.execute(retry=False) does around the call
    try:
        assert retries_disabled()
        assert retry.get_retries() == 0
    finally:
        restore_retries(token)
    assert not retries_disabled()
    assert retry.get_retries() == 3


async def test_retry_is_skipped_inside_no_retry_and_in_nested_loops() -> None:
    retry = GatewayRetry(NoBackoff(), 3)
    attempts = 0

    async def fail() -> None:
        nonlocal attempts
        attempts += 1
        raise rexc.ConnectionError("lost")

    async def on_fail(error: Exception) -> None:
        pass

    with pytest.raises(rexc.ConnectionError):
        await retry.call_with_retry(fail, on_fail)
    assert attempts == 4
    attempts = 0
    with no_retry(), pytest.raises(rexc.ConnectionError):
        await retry.call_with_retry(fail, on_fail)
    assert attempts == 1
    attempts = 0

    async def outer() -> None:
        await retry.call_with_retry(fail, on_fail)  # nested: one attempt per outer one

    with pytest.raises(rexc.ConnectionError):
        await retry.call_with_retry(outer, on_fail)
    assert attempts == 4
    assert not _driver.retry._IN_RETRY.get()


async def test_increment_whose_reply_is_lost_is_not_applied_twice(
    client: RedisClient, redis_admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Connection.read_response
    lose = {"INCR"}

    async def read_response(self: Connection, *args: object, **kwargs: object) -> object:
        reply = await original(self, *args, **kwargs)  # type: ignore[arg-type]
        if lose:
            lose.clear()
            await self.disconnect()
            raise rexc.ConnectionError("reply lost")
        return reply

    await client.set("n", "0")
    monkeypatch.setattr(Connection, "read_response", read_response)
    with pytest.raises(RedisUnavailable):
        await client.increment("n")
    assert redis_admin.get("gw:n") == b"1"  # the server ran it once; no retry resent it


async def test_get_whose_reply_is_lost_is_retried(
    client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.set("k", "v")
    original = Connection.read_response
    lose = [True]

    async def read_response(self: Connection, *args: object, **kwargs: object) -> object:
        reply = await original(self, *args, **kwargs)  # type: ignore[arg-type]
        if lose.pop() if lose else False:
            await self.disconnect()
            raise rexc.ConnectionError("reply lost")
        return reply

    monkeypatch.setattr(Connection, "read_response", read_response)
    assert await client.get("k") == b"v"


# -- GatewayPool -------------------------------------------------------------------------


@pytest.fixture
async def pool(redis_server: EmbeddedRedis) -> AsyncIterator[GatewayPool]:
    p = GatewayPool.from_url(redis_server.url, max_connections=1, timeout=2.0)
    assert isinstance(p, GatewayPool)
    yield p
    await p.disconnect()


async def test_idle_connection_is_lent_without_the_blocking_machinery(
    redis_config: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_gets = 0
    original = BlockingConnectionPool.get_connection

    async def counting(self: BlockingConnectionPool, *args: object, **kwargs: object) -> object:
        nonlocal slow_gets
        slow_gets += 1
        return await original(self, *args, **kwargs)

    waits: list[float] = []
    async with RedisClient(redis_config.replace(pool_size=4, min_idle_conns=4)) as c:
        assert c.backend.pool is not None
        c.backend.pool.wait_observer = waits.append
        monkeypatch.setattr(BlockingConnectionPool, "get_connection", counting)
        for _ in range(20):
            await c.set("k", "v")
        await asyncio.gather(*(c.get("k") for _ in range(4)))
        assert slow_gets == 0
        assert waits == [0.0] * 24
        assert c.pool_in_use == 0


async def test_waiters_are_served_in_order_before_newcomers(pool: GatewayPool) -> None:
    held = await pool.get_connection()
    order: list[str] = []

    async def take(name: str) -> Connection:
        conn = await pool.get_connection()
        order.append(name)
        return conn  # type: ignore[no-any-return]

    first = asyncio.create_task(take("waiter"))
    await asyncio.sleep(0.01)
    assert not first.done()
    await pool.release(held)  # wakes the waiter...
    newcomer = asyncio.create_task(take("newcomer"))  # ...who must not lose to this one
    conn = await first
    await asyncio.sleep(0.01)
    assert order == ["waiter"]
    assert not newcomer.done()
    assert pool.in_use == 1
    await pool.release(conn)
    await pool.release(await newcomer)
    assert order == ["waiter", "newcomer"]
    assert pool.in_use == 0


async def test_pool_cap_holds_under_concurrent_fast_and_slow_paths(
    redis_server: EmbeddedRedis,
) -> None:
    pool = GatewayPool.from_url(redis_server.url, max_connections=3, timeout=5.0)
    peak = 0

    async def use() -> None:
        nonlocal peak
        conn = await pool.get_connection()
        try:
            peak = max(peak, pool.in_use)
            await conn.send_command("PING")
            await conn.read_response()
            await asyncio.sleep(0)
        finally:
            await pool.release(conn)

    try:
        await asyncio.gather(*(use() for _ in range(300)))
        assert peak == 3
        assert pool.in_use == 0
        assert len(pool._available_connections) == 3
    finally:
        await pool.disconnect()


async def test_wait_is_bounded_by_the_pool_timeout(redis_server: EmbeddedRedis) -> None:
    pool = GatewayPool.from_url(redis_server.url, max_connections=1, timeout=0.1)
    try:
        held = await pool.get_connection()
        started = time.perf_counter()
        with pytest.raises(PoolExhausted):
            await pool.get_connection()
        assert 0.09 <= time.perf_counter() - started < 0.5
        await pool.release(held)
        await pool.release(await pool.get_connection())
        assert pool.in_use == 0
    finally:
        await pool.disconnect()


async def test_connection_marked_for_reconnect_is_released_and_replaced(
    pool: GatewayPool,
) -> None:
    conn = await pool.get_connection()
    conn.mark_for_reconnect()
    await pool.release(conn)
    assert not conn.is_connected
    again = await pool.get_connection()  # reconnects on the way out
    assert again.is_connected
    await again.send_command("PING")
    assert await again.read_response() in (b"PONG", "PONG", True)
    await pool.release(again)
    assert pool.in_use == 0


async def test_cancelled_waiter_leaves_the_pool_consistent(pool: GatewayPool) -> None:
    held = await pool.get_connection()
    waiter = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await pool.release(held)
    conn = await asyncio.wait_for(pool.get_connection(), 1.0)
    await pool.release(conn)
    assert pool.in_use == 0


async def test_idle_connection_closed_by_the_server_is_replaced_before_an_increment(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    """INCR is never retried, so a dead pooled connection must be caught before it is lent
    (there is no per-connection PING: the pool's own liveness check does this)."""
    async with RedisClient(redis_config.replace(pool_size=2, min_idle_conns=2)) as c:
        await c.set("n", "0")
        assert redis_admin.client_kill_filter(_type="normal", skipme=True) >= 2
        await asyncio.sleep(0.05)  # the closed sockets are seen by the event loop
        assert await c.increment("n") == 1
        assert await c.increment("n") == 2
        assert c.available
