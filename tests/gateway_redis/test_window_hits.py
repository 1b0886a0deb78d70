"""RedisClient.hit: fixed-window hit counting in one atomic round trip (count and expiry set
together), against a real server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis

from gateway_redis import CommandError, RedisClient, WindowHits


async def test_the_first_hit_starts_the_window_and_later_hits_keep_it(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    first = await client.hit("hits:a", 30)
    assert first.count == 1
    assert 29 < first.reset_after <= 30
    second = await client.hit("hits:a", timedelta(seconds=5))  # the window is not moved
    assert second.count == 2
    assert 25 < second.reset_after <= 30
    full = client.key("hits:a")
    assert 25_000 < redis_admin.pttl(full) <= 30_000
    assert (await client.hit("hits:a", 30, weight=5)).count == 7


async def test_concurrent_hits_each_see_a_distinct_count(client: RedisClient) -> None:
    results = await asyncio.gather(*(client.hit("hits:burst", 60) for _ in range(200)))
    assert sorted(r.count for r in results) == list(range(1, 201))
    assert all(0 < r.reset_after <= 60 for r in results)


async def test_a_window_ends_and_starts_again(client: RedisClient) -> None:
    await client.hit("hits:short", 0.2)
    await client.hit("hits:short", 0.2)
    await asyncio.sleep(0.4)
    assert await client.hit("hits:short", 0.2) == WindowHits(1, 0.2)


async def test_a_key_left_without_expiry_gets_one(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    full = client.key("hits:stuck")
    redis_admin.set(full, 41)
    hits = await client.hit("hits:stuck", 10)
    assert hits.count == 42
    assert 0 < redis_admin.pttl(full) <= 10_000


async def test_giving_back_never_goes_below_zero_nor_starts_a_window(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    assert await client.hit("hits:none", 10, weight=-1) == WindowHits(0, 0.0)
    assert redis_admin.exists(client.key("hits:none")) == 0
    await client.hit("hits:back", 10, weight=2)
    assert (await client.hit("hits:back", 10, weight=-1)).count == 1
    assert (await client.hit("hits:back", 10, weight=-5)).count == 0


async def test_bad_arguments_and_wrong_types(client: RedisClient) -> None:
    for weight in (0, True, 1.5):
        with pytest.raises(ValueError, match="weight"):
            await client.hit("hits:x", 10, weight=weight)  # type: ignore[arg-type]
    for window in (0, -1):
        with pytest.raises(ValueError, match="window"):
            await client.hit("hits:x", window)
    await client.set("hits:text", "abc")
    with pytest.raises(CommandError):
        await client.hit("hits:text", 10)
    assert client.available
