"""The cache API against a real server, driven the way the Go service documents it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis

from gateway_redis import (
    CacheKeyNotFound,
    ClientState,
    CommandError,
    RedisClient,
    RedisConfig,
    RedisUnavailable,
)
from gateway_redis.embedded import EmbeddedRedis


async def test_go_service_cache_usage(client: RedisClient) -> None:
    await client.set("user:123", b"user data", timedelta(hours=1))
    assert await client.get("user:123") == b"user data"
    assert await client.exists("user:123") is True
    await client.delete("user:123")
    with pytest.raises(CacheKeyNotFound):
        await client.get("user:123")
    assert await client.set_nx("lock:resource", b"locked", timedelta(minutes=10)) is True
    assert await client.set_nx("lock:resource", b"other", timedelta(minutes=10)) is False
    assert await client.get("lock:resource") == b"locked"
    assert await client.increment("page:views") == 1
    assert await client.increment("page:views") == 2


async def test_keys_carry_the_prefix(client: RedisClient, redis_admin: redis.Redis) -> None:
    await client.set("k", "v")
    assert redis_admin.get("gw:k") == b"v"
    assert redis_admin.get("k") is None


async def test_custom_prefix(redis_config: RedisConfig, redis_admin: redis.Redis) -> None:
    async with RedisClient(redis_config.replace(key_prefix="tenant-a:")) as c:
        await c.set("k", "v")
    assert redis_admin.get("tenant-a:k") == b"v"


async def test_str_values_are_stored_as_utf8(client: RedisClient) -> None:
    await client.set("s", "héllo")
    assert await client.get("s") == "héllo".encode()


async def test_set_rejects_non_bytes_values(client: RedisClient) -> None:
    with pytest.raises(TypeError):
        await client.set("k", 123)  # type: ignore[arg-type]


async def test_ttl_in_seconds_and_timedelta(client: RedisClient, redis_admin: redis.Redis) -> None:
    await client.set("a", "1", ttl=60)
    await client.set("b", "1", ttl=timedelta(minutes=2))
    assert 59_000 < redis_admin.pttl("gw:a") <= 60_000
    assert 119_000 < redis_admin.pttl("gw:b") <= 120_000


async def test_set_without_ttl_has_no_expiry(client: RedisClient, redis_admin: redis.Redis) -> None:
    await client.set("forever", "1")
    assert redis_admin.pttl("gw:forever") == -1


async def test_ttl_expiry_happens(client: RedisClient) -> None:
    await client.set("short", "1", ttl=0.2)
    assert await client.exists("short")
    await asyncio.sleep(0.35)
    assert not await client.exists("short")
    with pytest.raises(CacheKeyNotFound):
        await client.get("short")


async def test_set_nx_expires_so_a_lock_is_released(client: RedisClient) -> None:
    assert await client.set_nx("lock", "1", 0.2)
    await asyncio.sleep(0.35)
    assert await client.set_nx("lock", "2", 0.2)


async def test_expire_on_existing_and_missing_key(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    await client.set("k", "v")
    assert await client.expire("k", 30) is True
    assert 29_000 < redis_admin.pttl("gw:k") <= 30_000
    assert await client.expire("missing", 30) is False


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), timedelta(0)])
async def test_bad_ttl_is_rejected_before_sending(client: RedisClient, ttl: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        await client.set("k", "v", ttl=ttl)


async def test_increment_on_non_integer_is_a_redis_error_not_an_outage(client: RedisClient) -> None:
    await client.set("text", "abc")
    with pytest.raises(CommandError) as info:
        await client.increment("text")
    assert "not an integer" in str(info.value)
    assert client.available


async def test_concurrent_increments_count_exactly(client: RedisClient) -> None:
    await asyncio.gather(*(client.increment("counter") for _ in range(500)))
    assert await client.get("counter") == b"500"


async def test_ping_and_available(client: RedisClient) -> None:
    await client.ping()
    assert client.available
    assert client.state is ClientState.CONNECTED


async def test_closed_client_cannot_be_reused(redis_config: RedisConfig) -> None:
    c = RedisClient(redis_config)
    await c.connect()
    await c.aclose()
    await c.aclose()  # idempotent
    assert c.state is ClientState.CLOSED
    with pytest.raises(RedisUnavailable) as info:
        await c.get("k")
    assert info.value.reason == "closed"
    with pytest.raises(RedisUnavailable):
        await c.connect()


async def test_calls_before_connect_fail_clearly(redis_config: RedisConfig) -> None:
    c = RedisClient(redis_config)
    with pytest.raises(RedisUnavailable) as info:
        await c.set("k", "v")
    assert info.value.reason == "not_connected"
    await c.aclose()


def _gateway_clients(admin: redis.Redis) -> list[dict[str, object]]:
    return [c for c in admin.client_list() if c.get("name") == "gateway-redis"]


async def test_min_idle_connections_are_opened_at_connect(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    async with RedisClient(redis_config.replace(pool_size=10, min_idle_conns=4)) as c:
        assert c.pool_idle == 4
        assert len(_gateway_clients(redis_admin)) == 4


async def test_pool_size_is_a_hard_cap_and_callers_wait(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    cfg = redis_config.replace(
        pool_size=10, min_idle_conns=0, pool_timeout=5.0, operation_timeout=5.0
    )
    peak = 0
    async with RedisClient(cfg) as c:
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, len(_gateway_clients(redis_admin)))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        # BLPOP with a short server-side timeout holds a connection for a while, so 200
        # callers really compete for 10 connections.
        results = await asyncio.gather(
            *(
                c.execute("blpop", lambda r: r.blpop(["gw:nothing"], timeout=0.05))
                for _ in range(60)
            ),
            *(c.increment("n") for _ in range(140)),
        )
        stop.set()
        await watcher
        assert len(results) == 200
        assert await c.get("n") == b"140"
        assert c.pool_in_use == 0
    assert 0 < peak <= 10


async def test_pool_exhaustion_reports_unavailable_without_marking_redis_down(
    redis_config: RedisConfig,
) -> None:
    cfg = redis_config.replace(
        pool_size=1, min_idle_conns=0, pool_timeout=0.1, operation_timeout=2.0
    )
    async with RedisClient(cfg) as c:
        hog = asyncio.create_task(c.execute("blpop", lambda r: r.blpop(["gw:none"], timeout=0.5)))
        await asyncio.sleep(0.05)
        with pytest.raises(RedisUnavailable) as info:
            await c.get("k")
        assert info.value.reason == "pool_exhausted"
        assert c.available
        await hog


async def test_state_listener_sees_changes_once(fault_server: EmbeddedRedis) -> None:
    seen: list[str] = []
    async with RedisClient(RedisConfig(url=fault_server.url, probe_interval=0.1)) as c:
        c.add_state_listener(lambda state, reason: seen.append(state.value))
        fault_server.kill()
        for _ in range(5):
            with pytest.raises(RedisUnavailable):
                await c.get("k")
        fault_server.start()
        for _ in range(100):
            if c.available:
                break
            await asyncio.sleep(0.05)
    assert seen == ["down", "up"]


def test_repr_hides_password() -> None:
    c = RedisClient(RedisConfig(password="top-secret-password"))
    assert "top-secret" not in repr(c)
