"""RateLimitStore: GCRA over several limits in one script on the server's clock, against a
real server: exact under concurrency from two clients, nothing charged on refusal, a lost
script re-sent, one hash slot per identity."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.cluster import key_slot

from gateway_redis import Limit, RateLimitStore, RedisClient, RedisConfig


async def test_a_full_budget_can_be_spent_at_once_then_comes_back_one_unit_at_a_time(
    client: RedisClient,
) -> None:
    store = RateLimitStore(client)
    limits = [Limit(5, 60)]
    decisions = [await store.acquire("api", "alice", limits) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.states[0].remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    refused = decisions[-1]
    assert 11 < refused.retry_after <= 12  # one unit every 60 / 5 s
    assert 59 < refused.states[0].reset_after <= 60
    assert all(d.retry_after == 0 for d in decisions[:5])
    # another identity and another bucket have budgets of their own
    assert (await store.acquire("api", "bob", limits)).allowed
    assert (await store.acquire("other", "alice", limits)).allowed


async def test_a_unit_comes_back_after_one_emission_interval(client: RedisClient) -> None:
    store = RateLimitStore(client)
    limits = [Limit(2, 0.4)]
    assert (await store.acquire("fast", "a", limits)).allowed
    assert (await store.acquire("fast", "a", limits)).allowed
    refused = await store.acquire("fast", "a", limits)
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after + 0.02)
    assert (await store.acquire("fast", "a", limits)).allowed
    assert not (await store.acquire("fast", "a", limits)).allowed


async def test_several_limits_admit_together_and_a_refusal_charges_none(
    client: RedisClient,
) -> None:
    store = RateLimitStore(client)
    limits = [Limit(3, 1), Limit(4, 3600)]
    results = [await store.acquire("multi", "a", limits) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    refused = results[-1]
    assert [s.remaining for s in refused.states] == [0, 1]  # the hourly one was not charged
    assert refused.states[1].retry_after == 0  # the hourly limit alone would admit it
    await asyncio.sleep(1.05)
    assert (await store.acquire("multi", "a", limits)).allowed  # the 4th unit of the hour
    hourly = await store.acquire("multi", "a", limits)
    assert not hourly.allowed
    assert hourly.retry_after > 600  # now the hourly limit is what refuses


async def test_cost_charges_several_units(client: RedisClient) -> None:
    store = RateLimitStore(client)
    limits = [Limit(10, 60)]
    assert (await store.acquire("cost", "a", limits, cost=7)).states[0].remaining == 3
    refused = await store.acquire("cost", "a", limits, cost=4)
    assert not refused.allowed
    assert refused.states[0].remaining == 3
    assert (await store.acquire("cost", "a", limits, cost=3)).allowed


async def test_two_clients_with_200_concurrent_requests_admit_exactly_the_limit(
    client: RedisClient, redis_config: RedisConfig
) -> None:
    async with RedisClient(redis_config) as other:
        stores = [RateLimitStore(client), RateLimitStore(other)]
        limits = [Limit(50, 3600)]
        decisions = await asyncio.gather(
            *(stores[i % 2].acquire("budget", "shared", limits) for i in range(200))
        )
    assert sum(d.allowed for d in decisions) == 50
    remaining = sorted(d.states[0].remaining for d in decisions if d.allowed)
    assert remaining == list(range(50))  # each admitted request saw a distinct count


async def test_a_script_lost_by_a_restart_is_sent_again(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = RateLimitStore(client)
    limits = [Limit(3, 60)]
    assert (await store.acquire("lost", "a", limits)).allowed
    redis_admin.script_flush()  # what a restart or a failover to a fresh primary does
    assert redis_admin.script_exists(redis_admin.script_load("return 1"))[0]
    decision = await store.acquire("lost", "a", limits)
    assert decision.allowed
    assert decision.states[0].remaining == 1  # charged once, not twice


async def test_keys_of_one_identity_share_a_slot_and_never_hold_the_identity(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = RateLimitStore(client)
    limits = [Limit(10, 1), Limit(1000, 3600)]
    await store.acquire("api", "user@example.com", limits)
    keys = [k.decode() for k in redis_admin.keys("*rl:*")]
    assert len(keys) == 2
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert not any("user@example.com" in k for k in keys)
    assert all(0 < redis_admin.pttl(k) <= 3_600_000 for k in keys)


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [("10/s", 10, 1), ("1000/h", 1000, 3600), ("5/60s", 5, 60), ("100/5m", 100, 300)],
)
def test_limits_parse(text: str, limit: int, period: float) -> None:
    parsed = Limit.parse(text)
    assert (parsed.limit, parsed.period) == (limit, period)


@pytest.mark.parametrize("text", ["", "10", "x/s", "10/", "10/y", "-1/s", "0/s", "1/0s"])
def test_bad_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"limit|period"):
        Limit.parse(text)


async def test_bad_arguments_are_refused(client: RedisClient) -> None:
    store = RateLimitStore(client)
    limits = [Limit(5, 60)]
    await store.acquire("b", "a", limits)  # a checked spec must not let a look-alike in
    for bucket in ("", "a{b}", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="bucket"):
            await store.acquire(bucket, "a", limits)
    with pytest.raises(ValueError, match="limits"):
        await store.acquire("b", "a", [])
    for cost in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="cost"):
            await store.acquire("b", "a", limits, cost=cost)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never"):
        await store.acquire("b", "a", limits, cost=6)
