"""Channel presence on Redis Cluster: the three keys of a channel share one hash slot
(the scripts run there), for plain names and names with a hash tag."""

from __future__ import annotations

from redis.crc import key_slot

from gateway_redis import ChannelPresence, PresenceMember, PresenceStats, RedisClient, RedisConfig
from tests.topologies import ClusterTopology


async def test_presence_on_cluster(cluster: ClusterTopology) -> None:
    config = RedisConfig(cluster_nodes=cluster.addresses, probe_interval=0.2)
    async with RedisClient(config) as client, RedisClient(config) as other:
        a, b = ChannelPresence(client, ttl=30), ChannelPresence(other, ttl=30)
        for channel in ("news", "notifications:{u1}", "rooms:r1", "x:{a}}"):
            await a.join(channel, [PresenceMember("u1", "c1"), PresenceMember("u2", "c2")])
            await b.join(channel, [PresenceMember("u1", "c3")])
            assert await b.presence_stats(channel) == PresenceStats(3, 2), channel
            assert {m.conn for m in await a.presence(channel)} == {"c1", "c2", "c3"}
            await b.leave(channel, ["c3", "c1"])
            assert await a.presence_stats(channel) == PresenceStats(1, 1), channel
        slots = {
            key_slot(client.key(f"pres:{{u1}}:{k}:notifications:{{u1}}").encode()) for k in "zhu"
        }
        assert slots == {key_slot(b"notifications:{u1}")}
