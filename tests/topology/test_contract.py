"""The cache / session / pub/sub contract, run against every topology.

Standalone, Sentinel (1 primary + 1 replica + 3 sentinels) and Cluster (3 primaries with a
replica each), all real servers on loopback ports, started once for this module.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest

from gateway_redis import (
    CacheKeyNotFound,
    RedisClient,
    RedisConfig,
    SerializationError,
    SessionNotFound,
)
from gateway_redis.embedded import EmbeddedRedis, find_server_binary
from gateway_redis.sessions import id_digest
from tests.topologies import MASTER, ClusterTopology, SentinelTopology

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def topologies() -> Iterator[dict[str, tuple[RedisConfig, tuple[str, int]]]]:
    standalone = EmbeddedRedis()
    standalone.start()
    sentinel = SentinelTopology()
    cluster = ClusterTopology()
    try:
        yield {
            "standalone": (RedisConfig(url=standalone.url), ("127.0.0.1", standalone.port)),
            "sentinel": (
                RedisConfig(sentinels=sentinel.addresses, sentinel_master=MASTER),
                ("127.0.0.1", sentinel.primary.port),
            ),
            "cluster": (
                RedisConfig(cluster_nodes=cluster.addresses[:3]),
                ("127.0.0.1", cluster.nodes[0].port),
            ),
        }
    finally:
        cluster.cleanup()
        sentinel.cleanup()
        standalone.cleanup()


@pytest.fixture(params=["standalone", "sentinel", "cluster"])
async def topo_client(
    request: pytest.FixtureRequest,
    topologies: dict[str, tuple[RedisConfig, tuple[str, int]]],
) -> AsyncIterator[RedisClient]:
    config, _ = topologies[request.param]
    # A key prefix per test keeps tests apart without FLUSHALL on every node.
    prefix = f"c{abs(hash(request.node.nodeid)) % 10**8}:"
    async with RedisClient(config.replace(key_prefix=prefix)) as c:
        c.test_node = topologies[request.param][1]  # type: ignore[attr-defined]
        yield c


async def test_cache_operations(topo_client: RedisClient) -> None:
    c = topo_client
    await c.set("user:1", b"data", timedelta(minutes=1))
    assert await c.get("user:1") == b"data"
    assert await c.exists("user:1")
    await c.delete("user:1")
    with pytest.raises(CacheKeyNotFound):
        await c.get("user:1")
    assert await c.set_nx("lock", "a", 10)
    assert not await c.set_nx("lock", "b", 10)
    assert await c.expire("lock", 20)
    results = await asyncio.gather(*(c.increment("n") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))


async def test_window_hits_count_atomically(topo_client: RedisClient) -> None:
    keys = [f"hits:{n}" for n in range(8)]  # spread over slots on Cluster
    results = await asyncio.gather(*(topo_client.hit(k, 60) for k in keys for _ in range(25)))
    for key in keys:
        assert (await topo_client.hit(key, 60)).count == 26
    assert all(0 < r.reset_after <= 60 for r in results)
    assert (await topo_client.hit(keys[0], 60, weight=-30)).count == 0


async def test_ttl_expiry(topo_client: RedisClient) -> None:
    await topo_client.set("short", "x", ttl=0.2)
    await asyncio.sleep(0.4)
    assert not await topo_client.exists("short")


async def test_sessions(topo_client: RedisClient) -> None:
    c = topo_client
    sid = await c.create_session("alice", {"role": "admin"})
    await asyncio.gather(*(c.update_session(sid, {f"k{i}": i}) for i in range(100)))
    session = await c.get_session(sid)
    assert session.user_id == "alice"
    assert all(session.metadata[f"k{i}"] == i for i in range(100))
    other = await c.create_session("alice", {})
    listed = await c.get_user_sessions("alice")
    assert {s.digest for s in listed} == {id_digest(sid), id_digest(other)}
    for _ in range(20):
        victim = await c.create_session("bob", {})
        await asyncio.gather(
            c.update_session(victim, {"x": 1}), c.delete_session(victim), return_exceptions=True
        )
        with pytest.raises(SessionNotFound):
            await c.get_session(victim)
    assert await c.delete_user_sessions("alice") == 2
    assert await c.get_user_sessions("alice") == []


async def test_pubsub(topo_client: RedisClient) -> None:
    c = topo_client
    with pytest.raises(SerializationError):
        await c.publish("news", {"bad": object()})
    subs = [await c.subscribe("news", "alerts") for _ in range(5)]
    pattern = await c.psubscribe("metrics:*")
    try:
        await c.publish("news", {"n": 1})
        await c.publish("metrics:cpu", 0.5)
        host, port = c.test_node  # type: ignore[attr-defined]
        await asyncio.to_thread(
            subprocess.run,
            [
                find_server_binary("cli"),
                "-h",
                host,
                "-p",
                str(port),
                "PUBLISH",
                "alerts",
                '{"from":"redis-cli"}',
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        for sub in subs:
            first = await asyncio.wait_for(sub.__anext__(), 2)
            second = await asyncio.wait_for(sub.__anext__(), 2)
            assert (first.channel, first.data) == ("news", {"n": 1})
            assert (second.channel, second.payload) == ("alerts", '{"from":"redis-cli"}')
        got = await asyncio.wait_for(pattern.__anext__(), 2)
        assert (got.channel, got.pattern, got.data) == ("metrics:cpu", "metrics:*", 0.5)
        await c.unsubscribe("news")
        await c.publish("alerts", {"n": 2})
        for sub in subs:
            assert (await asyncio.wait_for(sub.__anext__(), 2)).data == {"n": 2}
            assert sub.channels == ("alerts",)
    finally:
        for sub in (*subs, pattern):
            await sub.close()


async def test_slow_subscriber_buffer_is_bounded(topo_client: RedisClient) -> None:
    c = topo_client
    slow = await c.subscribe("flood", buffer_size=10)
    fast = await c.subscribe("flood", buffer_size=1000)
    try:
        for i in range(300):
            await c.publish("flood", i)
        received = [(await asyncio.wait_for(fast.__anext__(), 2)).data for _ in range(300)]
        assert received == list(range(300))
        assert slow.pending == 10
        assert slow.dropped == 290
        kept = [m.data for m in slow.drain()]
        assert kept == list(range(290, 300))
    finally:
        await slow.close()
        await fast.close()
