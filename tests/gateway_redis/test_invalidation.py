"""The invalidation bus: cross-instance events, resync hooks, bypass while out of sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.invalidation import InvalidationBus


async def _wait_for(predicate: Any, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if predicate():
            return time.perf_counter() - started
        await asyncio.sleep(0.002)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
async def two_buses(
    redis_config: RedisConfig,
) -> AsyncIterator[tuple[InvalidationBus, InvalidationBus]]:
    async with RedisClient(redis_config) as c1, RedisClient(redis_config) as c2:
        b1, b2 = InvalidationBus(c1), InvalidationBus(c2)
        async with b1, b2:
            assert await b1.wait_synced(3)
            assert await b2.wait_synced(3)
            yield b1, b2


async def test_event_reaches_the_other_instance_within_100_ms(
    two_buses: tuple[InvalidationBus, InvalidationBus],
) -> None:
    b1, b2 = two_buses
    seen1: list[Mapping[str, Any]] = []
    seen2: list[Mapping[str, Any]] = []
    cache2 = b2.local_cache("test", maxsize=10, ttl=10)
    cache2.set("k", 1)
    b1.on_event("test", seen1.append)

    def drop(event: Mapping[str, Any]) -> None:
        seen2.append(event)
        cache2.delete(event["key"])

    b2.on_event("test", drop)
    latencies = []
    for i in range(20):
        cache2.set("k", i)
        started = time.perf_counter()
        await b1.publish("test", {"key": "k"})
        assert len(seen1) == i + 1  # applied locally before publish returned
        latencies.append(await _wait_for(lambda: cache2.get("k") is None, 1.0))
        assert time.perf_counter() - started < 0.1
    assert len(seen2) == 20
    latencies.sort()
    print(
        f"invalidation latency p50={latencies[10] * 1000:.2f} ms max={latencies[-1] * 1000:.2f} ms"
    )


async def test_own_events_are_not_applied_twice(
    two_buses: tuple[InvalidationBus, InvalidationBus],
) -> None:
    b1, b2 = two_buses
    seen1: list[Mapping[str, Any]] = []
    seen2: list[Mapping[str, Any]] = []
    b1.on_event("ns", seen1.append)
    b2.on_event("ns", seen2.append)
    await b1.publish("ns", {"x": 1})
    await _wait_for(lambda: len(seen2) == 1, 1.0)
    await asyncio.sleep(0.05)
    assert len(seen1) == 1
    assert seen2[0]["x"] == 1


async def test_publish_rejects_reserved_keys(
    two_buses: tuple[InvalidationBus, InvalidationBus],
) -> None:
    with pytest.raises(ValueError, match="ns"):
        await two_buses[0].publish("ns", {"src": "x"})


async def test_caches_stay_bypassed_until_started_and_resync_hooks_ran(
    redis_config: RedisConfig,
) -> None:
    async with RedisClient(redis_config) as c:
        bus = InvalidationBus(c)
        cache = bus.local_cache("c", maxsize=10, ttl=10)
        assert not cache.set("k", 1)
        ran = asyncio.Event()
        release = asyncio.Event()

        async def hook() -> None:
            ran.set()
            await release.wait()

        bus.on_resync(hook)
        async with bus:
            await asyncio.wait_for(ran.wait(), 3)
            assert not bus.healthy
            assert not cache.enabled
            release.set()
            assert await bus.wait_synced(3)
            assert cache.set("k", 1)
            assert cache.get("k") == 1
        assert not cache.enabled
        assert len(cache) == 0


@pytest.mark.slow
async def test_redis_loss_flushes_and_bypasses_l1_until_resynced(
    fault_server: EmbeddedRedis,
) -> None:
    config = RedisConfig(url=fault_server.url, probe_interval=0.2, operation_timeout=0.5)
    async with RedisClient(config) as c1, RedisClient(config) as c2:
        b1, b2 = InvalidationBus(c1), InvalidationBus(c2)
        resyncs = 0

        async def hook() -> None:
            nonlocal resyncs
            await c2.ping()  # a hook that needs Redis
            resyncs += 1

        b2.on_resync(hook)
        cache = b2.local_cache("c", maxsize=10, ttl=60)
        async with b1, b2:
            assert await b2.wait_synced(3)
            cache.set("k", 1)
            fault_server.kill()
            await _wait_for(lambda: not cache.enabled, 2.0)
            assert cache.get("k") is None
            assert not b2.healthy
            with pytest.raises(RedisUnavailable):
                await b1.publish("c", {"k": 1})
            fault_server.start()
            took = await _wait_for(lambda: b2.healthy, 5.0)
            assert resyncs == 2
            assert cache.enabled
            assert len(cache) == 0
            # and events flow again
            seen: list[Mapping[str, Any]] = []
            b2.on_event("c", seen.append)
            await _wait_for(lambda: b1.healthy, 5.0)
            await b1.publish("c", {"k": 2})
            await _wait_for(lambda: bool(seen), 1.0)
    print(f"L1 back {took * 1000:.0f} ms after the server restarted")


@pytest.mark.slow
async def test_killed_subscriber_connection_flushes_l1_and_resyncs(
    redis_config: RedisConfig, redis_admin: Any
) -> None:
    async with RedisClient(redis_config) as c:
        bus = InvalidationBus(c)
        cache = bus.local_cache("c", maxsize=10, ttl=60)
        async with bus:
            assert await bus.wait_synced(3)
            before = bus.resyncs
            cache.set("k", 1)
            redis_admin.client_kill_filter(_type="pubsub")
            await _wait_for(lambda: bus.resyncs > before, 5.0)
            assert cache.enabled
            assert cache.get("k") is None
