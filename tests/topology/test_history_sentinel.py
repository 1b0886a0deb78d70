"""Channel history across a Sentinel failover: what the replica had is still there under
the same epoch, and a reader either continues without a gap or is told it cannot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway_redis import (
    ChannelHistory,
    Position,
    Published,
    RedisClient,
    RedisConfig,
    RedisUnavailable,
)
from tests.topologies import MASTER, SentinelTopology, replica_caught_up, sentinel_topology

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topo:
        yield topo


async def test_history_survives_a_failover_or_says_it_cannot(sentinel: SentinelTopology) -> None:
    config = RedisConfig(
        sentinels=sentinel.addresses, sentinel_master=MASTER, probe_interval=0.2,
        operation_timeout=1.0,
    )  # fmt: skip
    async with RedisClient(config) as client:
        history = ChannelHistory(client, size=100, ttl=60)
        sent = [await history.publish("news", n) for n in range(20)]
        before = sent[-1].position
        port = sentinel.master_address()[1]
        replica = next(n.port for n in (sentinel.primary, sentinel.replica) if n.port != port)
        deadline = time.monotonic() + 5
        while not replica_caught_up(port, replica):  # the replica has all 20
            assert time.monotonic() < deadline, "the replica did not catch up"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(sentinel.node(port).kill)
        await asyncio.to_thread(sentinel.wait_failover, port)
        deadline = time.monotonic() + 20
        after: list[Published] = []
        while len(after) < 10:
            try:
                after.append(await history.publish("news", 20 + len(after)))
            except RedisUnavailable:
                assert time.monotonic() < deadline, "no publish succeeded after the failover"
                await asyncio.sleep(0.1)
        page = await history.read("news", since=before)
        assert page.recovered
        assert page.position == Position(before.epoch, 30)
        assert [m.data for m in page.messages] == list(range(20, 30))
        assert [m.offset for m in page.messages] == list(range(21, 31))
