"""Sentinel: the client follows a failover without a restart, during traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable, SessionNotFound
from tests.topologies import MASTER, SentinelTopology, sentinel_topology

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topo:
        yield topo


def _config(topo: SentinelTopology) -> RedisConfig:
    return RedisConfig(
        sentinels=topo.addresses,
        sentinel_master=MASTER,
        probe_interval=0.2,
        operation_timeout=1.0,
    )


async def test_from_env_and_url_select_sentinel_mode(sentinel: SentinelTopology) -> None:
    nodes = ",".join(f"{h}:{p}" for h, p in sentinel.addresses)
    by_env = RedisConfig.from_env({"REDIS_SENTINELS": nodes, "REDIS_SENTINEL_MASTER": MASTER})
    by_url = RedisConfig.from_env({"REDIS_URL": f"redis+sentinel://{nodes}/{MASTER}/0"})
    for config in (by_env, by_url):
        assert config.mode == "sentinel"
        async with RedisClient(config) as c:
            await c.set("k", "v")
            assert await c.get("k") == b"v"


async def test_client_follows_failover_under_traffic(sentinel: SentinelTopology) -> None:
    async with RedisClient(_config(sentinel)) as c:
        sid = await c.create_session("alice", {"role": "admin"})
        await c.set("before", "1")
        await asyncio.sleep(0.3)  # let the replica receive the writes
        old = sentinel.master_address()
        errors_before_recovery = 0
        errors_after_recovery = 0
        first_success_after_kill: float | None = None
        killed_at = 0.0
        stop_at = 0.0
        ok_after = 0

        async def traffic(i: int) -> None:
            nonlocal errors_before_recovery, errors_after_recovery, first_success_after_kill
            nonlocal ok_after
            n = 0
            while not stop_at or time.perf_counter() < stop_at:
                n += 1
                started = time.perf_counter()
                try:
                    await c.set(f"t{i}", str(n))
                    await c.get(f"t{i}")
                    await c.get_session(sid)
                    await c.publish("events", {"n": n})
                except (RedisUnavailable, SessionNotFound):
                    if first_success_after_kill is None or started < first_success_after_kill:
                        errors_before_recovery += 1
                    else:
                        errors_after_recovery += 1
                    await asyncio.sleep(0.02)
                    continue
                # Only a round that began after the kill proves recovery.
                if killed_at and started > killed_at:
                    if first_success_after_kill is None:
                        first_success_after_kill = time.perf_counter()
                    ok_after += 1
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(traffic(i)) for i in range(5)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(sentinel.node(old[1]).kill)
        killed_at = time.perf_counter()
        new = await asyncio.to_thread(sentinel.wait_failover, old[1])
        for _ in range(200):
            if first_success_after_kill is not None:
                break
            await asyncio.sleep(0.05)
        stop_at = time.perf_counter() + 1.5
        await asyncio.gather(*tasks)
        assert new != old
        assert first_success_after_kill is not None, "never recovered after the failover"
        outage = first_success_after_kill - killed_at
        print(
            f"sentinel failover: outage window {outage:.2f}s, {errors_before_recovery} failed "
            f"calls during it, {errors_after_recovery} after, {ok_after} good rounds after"
        )
        assert errors_after_recovery == 0
        assert ok_after > 10
        assert c.available
        # Data written before the failover survived on the promoted replica.
        assert await c.get("before") == b"1"
        assert (await c.get_session(sid)).metadata["role"] == "admin"


async def test_logout_is_confirmed_by_a_replica_or_fails_closed(sentinel: SentinelTopology) -> None:
    async with RedisClient(_config(sentinel)) as c:
        sid = await c.create_session("bob", {})
        await c.delete_session(sid)  # replica up: WAIT 1 succeeds
        with pytest.raises(SessionNotFound):
            await c.get_session(sid)
        sid = await c.create_session("bob", {})
        sentinel.replica.freeze()
        try:
            with pytest.raises(RedisUnavailable) as info:
                await c.delete_session(sid)
            assert info.value.reason in ("unconfirmed", "timeout")
        finally:
            sentinel.replica.thaw()
