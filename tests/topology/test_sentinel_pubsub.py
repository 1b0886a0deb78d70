"""Pub/sub through a Sentinel failover: classic and sharded channels, ``+switch-master``.

One primary, one replica, three sentinels (``down-after-milliseconds 1000``). The hub
listens for ``+switch-master`` on a sentinel, so its subscriber connections retry the
moment the sentinels name the new primary instead of at their next backoff step (up to
1 s apart by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio

from gateway_redis import Message, RedisClient, RedisConfig, RedisUnavailable, Subscription
from tests.topologies import MASTER, SentinelTopology, sentinel_topology

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topo:
        yield topo


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return time.monotonic()


async def first_after(client: RedisClient, sub: Subscription, timeout: float) -> Message:
    """Publish on the subscription's channel every 50 ms until a message arrives."""
    (channel,) = sub.channels
    deadline = time.monotonic() + timeout
    seq = 0
    while True:
        seq += 1
        with contextlib.suppress(RedisUnavailable):
            await client.publish(channel, {"seq": seq})
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(anext(sub), 0.05)
        assert time.monotonic() < deadline, f"{channel}: nothing after the failover"


async def test_subscriptions_follow_a_sentinel_failover_at_switch_master(
    sentinel: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    config = RedisConfig(
        sentinels=sentinel.addresses,
        sentinel_master=MASTER,
        probe_interval=0.2,
        sharded_channels=("orders:*",),
    )
    switched: list[float] = []

    async def hear_switch() -> None:  # the test's own ear, to time the switch
        with redis.Redis(port=sentinel.sentinels[1].port) as probe:
            probe.ping()
        r = redis.asyncio.Redis(port=sentinel.sentinels[1].port)
        pubsub = r.pubsub()
        try:
            await pubsub.subscribe("+switch-master")
            async for message in pubsub.listen():
                if message["type"] == "message":
                    switched.append(time.monotonic())
                    return
        finally:
            await pubsub.aclose()
            await r.aclose()

    async with RedisClient(config) as c:
        classic = await c.subscribe("news")
        shard = await c.subscribe("orders:1")
        old_port = sentinel.master_address()[1]
        with redis.Redis(port=old_port) as primary:
            assert primary.execute_command("PUBSUB", "SHARDCHANNELS") == [b"orders:1"]
        await wait_for(lambda: c.pubsub.connected, 2, "the hub connected")
        ear = asyncio.create_task(hear_switch())
        try:
            await asyncio.sleep(0.3)  # both ears subscribed
            with caplog.at_level(logging.INFO, logger="gateway_redis.pubsub"):
                killed_at = time.monotonic()
                await asyncio.to_thread(sentinel.node(old_port).kill)
                await wait_for(lambda: not c.pubsub.connected, 1, "the drop")
                await wait_for(lambda: bool(switched), 20, "+switch-master")
                back_at = await wait_for(lambda: c.pubsub.connected, 5, "resubscribed")
            assert "sentinel switched the primary" in caplog.text
            for sub in (classic, shard):
                message = await first_after(c, sub, 10)
                assert message.gap_before
            new_port = sentinel.master_address()[1]
            assert new_port != old_port
            with redis.Redis(port=new_port) as primary:
                assert primary.execute_command("PUBSUB", "SHARDCHANNELS") == [b"orders:1"]
            after_switch = back_at - switched[0]
            print(
                f"\nsentinel failover: +switch-master {switched[0] - killed_at:.2f}s after the "
                f"kill; classic and sharded subscriptions back {after_switch * 1000:.0f} ms "
                "after it"
            )
            assert after_switch < 0.3  # without the hint: up to 1 s (backoff)
        finally:
            ear.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ear
            await classic.close()
            await shard.close()
