"""Non-idempotent commands are sent at most once, on standalone Redis and on Cluster.

A TCP proxy between the client and every server (:class:`tests.lossy_proxy.LossyProxies`)
lets the server run a command and then loses its reply by closing the connection. INCR,
PUBLISH, SPUBLISH and MULTI/EXEC must then fail with ``RedisUnavailable`` having run once
(redis-py's cluster client has a retry loop of its own, which must honour ``no_retry``
too); an idempotent GET through the same fault is retried and succeeds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from tests.lossy_proxy import LossyProxies
from tests.topologies import ClusterTopology

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    client: RedisClient
    proxies: LossyProxies
    read: Callable[[str], bytes | None]  # a key's value, read past the proxies


@pytest.fixture(params=["standalone", "cluster"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    proxies = LossyProxies()
    prefix = f"amo{abs(hash(request.node.nodeid)) % 10**8}:"
    common: dict[str, Any] = {
        "key_prefix": prefix,
        "sharded_channels": ("shard:*",),
        "operation_timeout": 2.0,
    }
    admin: Any
    if request.param == "standalone":
        server: EmbeddedRedis = request.getfixturevalue("redis_server")
        host, port = await proxies.add(("127.0.0.1", server.port))
        client = RedisClient(RedisConfig(url=f"redis://{host}:{port}", **common))
        admin = redis.Redis(port=server.port)
    else:
        topo: ClusterTopology = request.getfixturevalue("cluster")
        seeds = tuple([await proxies.add(address) for address in topo.addresses])
        client = RedisClient(RedisConfig(cluster_nodes=seeds[:2], **common))
        # The nodes announce their own addresses (CLUSTER SLOTS): reach them through
        # their proxies too, with redis-py's own address_remap.
        assert client.backend.cluster is not None
        client.backend.cluster.nodes_manager.address_remap = proxies.remap
        admin = redis.RedisCluster(host="127.0.0.1", port=topo.addresses[0][1])
    try:
        async with client:
            yield Setup(client, proxies, lambda key: admin.get(prefix + key))
    finally:
        admin.close()
        await proxies.aclose()


async def test_increment_whose_reply_is_lost_runs_once(setup: Setup) -> None:
    setup.proxies.lose("INCRBY")  # redis-py sends INCR as INCRBY key 1
    with pytest.raises(RedisUnavailable):
        await setup.client.increment("n")
    assert not setup.proxies.armed
    assert setup.proxies.seen["INCRBY"] == 1
    assert setup.read("n") == b"1"


@pytest.mark.parametrize(("channel", "command"), [("news", "PUBLISH"), ("shard:a", "SPUBLISH")])
async def test_publish_whose_reply_is_lost_is_sent_once(
    setup: Setup, channel: str, command: str
) -> None:
    setup.proxies.lose(command)
    with pytest.raises(RedisUnavailable):
        await setup.client.publish(channel, {"n": 1})
    assert not setup.proxies.armed
    assert setup.proxies.seen[command] == 1


async def test_transaction_whose_reply_is_lost_runs_once(setup: Setup) -> None:
    key = setup.client.key("v")

    async def bump(r: Any) -> Any:
        pipe = r.pipeline(transaction=True)
        pipe.incr(key)
        pipe.pexpire(key, 60_000)
        return (await pipe.execute())[0]

    setup.proxies.lose("EXEC")
    with pytest.raises(RedisUnavailable):
        await setup.client.execute("bump", bump, retry=False)
    assert not setup.proxies.armed
    assert setup.proxies.seen["EXEC"] == 1
    assert setup.read("v") == b"1"


async def test_get_whose_reply_is_lost_is_retried_and_succeeds(setup: Setup) -> None:
    await setup.client.set("k", "v")
    setup.proxies.lose("GET")
    assert await setup.client.get("k") == b"v"
    assert not setup.proxies.armed
    assert setup.proxies.seen["GET"] == 2
