"""Loss-free reconnect through a Sentinel failover (issue 15, "Checked by", case d): the
example gateway on a Sentinel topology, 200 sequence-numbered messages at 100/s published
through the library, one client connected throughout and one that drops and comes back
with ``recover`` after the failover. Both end with every message exactly once, in order,
on one epoch, and no ``resync``: the bridge mends its own lost subscription from history.

Redis replication is asynchronous: a failover can lose the last acknowledged writes (the
history module's docstring). To test the protocol rather than that, the publisher pauses
for the kill until the replica has everything (a few tens of milliseconds), then goes on
at once, retrying (idempotency keys) until the new primary answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from examples.realtime import create_app
from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.support import cancel_and_wait
from tests.topologies import MASTER, SentinelTopology, replica_caught_up, sentinel_topology
from tests.websocket.seqstream import (
    CHANNEL,
    SeqReader,
    SteadyPublisher,
    assert_exactly_once_in_order,
    library_publisher,
    until,
)
from tests.websocket.wsutil import gateway_env, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

COUNT = 200


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topo:
        yield topo


async def test_clients_recover_everything_through_a_sentinel_failover(
    sentinel: SentinelTopology,
) -> None:
    addresses = ",".join(f"{h}:{p}" for h, p in sentinel.addresses)
    env = gateway_env("", REDIS_SENTINELS=addresses, REDIS_SENTINEL_MASTER=MASTER)
    del env["REDIS_URL"]
    config = RedisConfig(
        sentinels=sentinel.addresses, sentinel_master=MASTER, probe_interval=0.2,
        operation_timeout=1.0,
    )  # fmt: skip
    async with RedisClient(config) as client, serve_app(create_app(env)) as gateway:
        stays, away = SeqReader("stays"), SeqReader("away")
        for reader in (stays, away):
            await reader.connect(gateway)
        history = ChannelHistory(client, size=1000, ttl=300)  # the example's rule
        publisher = SteadyPublisher(library_publisher(history), count=COUNT)
        publishing = asyncio.create_task(publisher.run(timeout=60))
        old = sentinel.master_address()[1]
        replica = next(n.port for n in (sentinel.primary, sentinel.replica) if n.port != old)
        try:
            await until(lambda: stays.has(60) and away.has(60), "60 messages")
            publisher.gate.clear()
            await asyncio.wait_for(publisher.paused.wait(), 5)
            deadline = time.monotonic() + 5
            while not replica_caught_up(old, replica):
                assert time.monotonic() < deadline, "the replica did not catch up"
                await asyncio.sleep(0.005)
            await away.drop()
            await asyncio.to_thread(sentinel.node(old).kill)
            publisher.gate.set()  # publishing goes on, retried until the new primary answers
            await asyncio.to_thread(sentinel.wait_failover, old)
            await until(lambda: publisher.sent >= 120, "publishing after the failover", 30)
            reply = await away.connect(gateway)
            assert reply["recovered"] == {CHANNEL: True}, reply
            await publishing
        finally:
            await cancel_and_wait(publishing)
        await until(lambda: stays.has(COUNT) and away.has(COUNT), "the last message")
        await asyncio.sleep(0.1)  # nothing more may come (a duplicate would)
        for reader in (stays, away):
            await reader.close()
    print(
        f"\nsentinel failover: {publisher.retries} publish retries; "
        f"'away' was answered unavailable {away.unavailable} times before recovering"
    )
    for reader in (stays, away):
        assert reader.others == [], (reader.user, reader.others)  # no resync
        assert_exactly_once_in_order(reader, COUNT)
