"""Channel history on Redis Cluster: the meta hash, the stream and (for a sharded channel)
the channel itself share one hash slot, so the publish script runs where they all live."""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from gateway_redis import ChannelHistory, Position, RedisClient, RedisConfig
from tests.pubsubutil import receive
from tests.topologies import ClusterTopology


def _config(topo: ClusterTopology) -> RedisConfig:
    return RedisConfig(
        cluster_nodes=topo.addresses, sharded_channels=("ticks:*",), probe_interval=0.2
    )


async def test_history_on_cluster_classic_and_sharded(cluster: ClusterTopology) -> None:
    async with RedisClient(_config(cluster)) as client, RedisClient(_config(cluster)) as other:
        history = ChannelHistory(client, size=100, ttl=60)
        second = ChannelHistory(other, size=100, ttl=60)
        for channel in ("news", "ticks:{eur}", "ticks:usd", "notifications:{u1}"):
            async with await client.subscribe(channel) as sub:

                async def burst(h: ChannelHistory, channel: str = channel) -> list[int]:
                    return [(await h.publish(channel, i)).offset for i in range(20)]

                a, b = await asyncio.gather(burst(history), burst(second))
                assert sorted(a + b) == list(range(1, 41)), channel
                got = [await receive(sub, 5.0) for _ in range(40)]
                assert [m.offset for m in got] == list(range(1, 41)), channel
            top = await history.position(channel)
            assert top.offset == 40
            page = await second.read(channel, since=Position(top.epoch, 30))
            assert page.recovered
            assert [m.offset for m in page.messages] == list(range(31, 41))
        # the keys of a sharded channel hash where the channel does
        meta = client.key("hist:{eur}:m:ticks:{eur}")
        assert key_slot(meta.encode()) == key_slot(b"ticks:{eur}")
