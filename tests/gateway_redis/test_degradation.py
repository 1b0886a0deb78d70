"""Fault injection on a real server: killed, frozen, restarted, wrong password, hang-ups."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway_redis import (
    CacheKeyNotFound,
    CacheUnavailable,
    ConfigurationError,
    HealthState,
    RedisClient,
    RedisConfig,
    RedisUnavailable,
)
from gateway_redis.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow


def _config(server: EmbeddedRedis, **overrides: object) -> RedisConfig:
    base = RedisConfig(url=server.url, probe_interval=0.5, operation_timeout=0.5, read_timeout=0.4)
    return base.replace(**overrides)


async def _wait_for(predicate: object, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.perf_counter() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_killed_server_calls_fail_fast_with_documented_errors(
    fault_server: EmbeddedRedis,
) -> None:
    async with RedisClient(_config(fault_server)) as c:
        await c.set("k", "v")
        fault_server.kill()
        started = time.perf_counter()
        with pytest.raises(CacheUnavailable) as miss:
            await c.get("k")
        first = time.perf_counter() - started
        # get's error is both a miss and an outage
        assert isinstance(miss.value, CacheKeyNotFound)
        assert isinstance(miss.value, RedisUnavailable)
        assert first < 0.05, f"first call after kill took {first * 1000:.1f} ms"
        assert not c.available
        assert c.health is HealthState.DOWN
        for op in (c.set("k", "v"), c.delete("k"), c.exists("k"), c.increment("n"), c.ping()):
            started = time.perf_counter()
            with pytest.raises(RedisUnavailable) as info:
                await op
            assert not isinstance(info.value, CacheKeyNotFound)
            assert time.perf_counter() - started < 0.05


async def test_server_back_makes_client_available_without_calls(
    fault_server: EmbeddedRedis,
) -> None:
    async with RedisClient(_config(fault_server)) as c:
        fault_server.kill()
        with pytest.raises(RedisUnavailable):
            await c.ping()
        fault_server.start()
        took = await _wait_for(lambda: c.available, 2.0)
        await c.set("after", "restart")
        assert await c.get("after") == b"restart"
    print(f"available again {took * 1000:.0f} ms after restart")


async def test_frozen_server_calls_respect_the_deadline_then_fail_fast(
    fault_server: EmbeddedRedis,
) -> None:
    async with RedisClient(_config(fault_server, operation_timeout=0.5)) as c:
        await c.set("k", "v")
        fault_server.freeze()
        try:
            started = time.perf_counter()
            results = await asyncio.gather(*(c.get("k") for _ in range(20)), return_exceptions=True)
            waited = time.perf_counter() - started
            assert all(isinstance(r, RedisUnavailable) for r in results)
            assert waited < 0.5 + 0.15, f"calls waited {waited:.3f}s with a 0.5s deadline"
            # A passed deadline is no verdict by itself (our loop may have been too busy to
            # read the reply): the probe it asks for decides, within its own time limit
            # (min(dial_timeout, probe_interval, 1.0) = 0.5 s here).
            await _wait_for(lambda: not c.available, 0.5 + 0.3)
            started = time.perf_counter()
            with pytest.raises(CacheUnavailable):
                await c.get("k")
            assert time.perf_counter() - started < 0.05
        finally:
            fault_server.thaw()
        await _wait_for(lambda: c.available, 2.0)
        assert await c.get("k") == b"v"
        assert c.pool_in_use == 0


async def test_frozen_server_detected_by_probe_without_traffic(fault_server: EmbeddedRedis) -> None:
    # The periodic check of the command pool runs every health_check_interval; the probe
    # after a failure is what matters here: freeze, one failing call, then thaw.
    async with RedisClient(_config(fault_server)) as c:
        fault_server.freeze()
        try:
            with pytest.raises(RedisUnavailable):
                await c.ping()
        finally:
            fault_server.thaw()
        took = await _wait_for(lambda: c.available, 2.0)
        assert took < 2.0


async def test_in_flight_work_recovers_after_restart(fault_server: EmbeddedRedis) -> None:
    cfg = _config(fault_server, pool_size=5, probe_interval=0.2)
    async with RedisClient(cfg) as c:
        errors: list[BaseException] = []
        successes_after: list[float] = []
        restarted_at = 0.0
        stop = time.perf_counter() + 4.0

        async def worker(i: int) -> None:
            n = 0
            while time.perf_counter() < stop:
                n += 1
                try:
                    await c.set(f"w{i}", str(n))
                    assert await c.get(f"w{i}") == str(n).encode()
                    if restarted_at and time.perf_counter() > restarted_at:
                        successes_after.append(time.perf_counter())
                except RedisUnavailable as exc:
                    errors.append(exc)
                    await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(worker(i)) for i in range(10)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fault_server.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fault_server.start)
        restarted_at = time.perf_counter()
        await asyncio.gather(*tasks)
        assert errors, "killing the server should have failed some calls"
        assert successes_after, "no call succeeded after the restart"
        recovery = successes_after[0] - restarted_at
        assert recovery < 2.0
        assert c.available
        assert c.pool_in_use == 0
        print(
            f"{len(errors)} failed calls during the outage; "
            f"recovered {recovery * 1000:.0f} ms after restart"
        )


async def test_idle_connections_reset_by_server_are_replaced_transparently(
    fault_server: EmbeddedRedis,
) -> None:
    admin = redis.Redis.from_url(fault_server.url)
    async with RedisClient(_config(fault_server, min_idle_conns=3)) as c:
        await c.set("k", "v")
        killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 3
        # The retry reconnects: no error reaches the caller and Redis stays "up".
        assert await c.get("k") == b"v"
        assert c.available
    admin.close()


async def test_wrong_password_is_a_configuration_error_without_retry_storm() -> None:
    with EmbeddedRedis(password="right-password-123") as server:
        admin = redis.Redis.from_url(server.url)
        before = int(admin.info("stats")["total_connections_received"])
        bad = RedisConfig(
            url=f"redis://:wrong-password@127.0.0.1:{server.port}/0", min_idle_conns=2
        )
        client = RedisClient(bad)
        with pytest.raises(ConfigurationError) as info:
            await client.connect()
        assert "wrong-password" not in str(info.value)
        after = int(admin.info("stats")["total_connections_received"])
        # One attempt for the warm connection (+ the admin's own connection): no storm.
        assert after - before <= 3
        await client.aclose()

        # A client that starts fine and then loses its credentials reports "misconfigured".
        good = RedisConfig(url=server.url, probe_interval=0.2, min_idle_conns=1)
        async with RedisClient(good) as c:
            await c.set("k", "v")
            admin.config_set("requirepass", "rotated-password-456")
            admin2 = redis.Redis.from_url(
                f"redis://:rotated-password-456@127.0.0.1:{server.port}/0"
            )
            admin2.client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(RedisUnavailable):
                await c.get("k")
            await _wait_for(lambda: c.health is HealthState.MISCONFIGURED, 2.0)
            before = int(admin2.info("stats")["total_connections_received"])
            await asyncio.sleep(1.5)
            after = int(admin2.info("stats")["total_connections_received"])
            assert after - before <= 4, "misconfigured client probed in a storm"
            admin2.close()
        admin.close()


async def test_cancellation_storm_leaves_pool_consistent(fault_server: EmbeddedRedis) -> None:
    cfg = _config(fault_server, pool_size=8, operation_timeout=2.0)
    async with RedisClient(cfg) as c:
        for i in range(50):
            await c.set(f"key{i}", f"value{i}")

        async def slow_then_get(i: int) -> bytes:
            return await c.get(f"key{i % 50}")

        for _ in range(5):
            tasks = [asyncio.create_task(slow_then_get(i)) for i in range(200)]
            await asyncio.sleep(0.001)
            for t in tasks[::2]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert c.pool_in_use == 0
        # Replies still match their requests: no connection was left out of sync.
        values = await asyncio.gather(*(c.get(f"key{i}") for i in range(50)))
        assert values == [f"value{i}".encode() for i in range(50)]


async def test_client_starts_degraded_when_redis_is_down_and_recovers() -> None:
    server = EmbeddedRedis()
    cfg = RedisConfig(url=server.url, probe_interval=0.2)
    async with RedisClient(cfg) as c:
        assert not c.available
        with pytest.raises(RedisUnavailable):
            await c.set("k", "v")
        server.start()
        try:
            await _wait_for(lambda: c.available, 2.0)
            await c.set("k", "v")
        finally:
            server.cleanup()
