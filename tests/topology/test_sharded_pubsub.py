"""Sharded pub/sub (SPUBLISH/SSUBSCRIBE) on a real Redis Cluster (3 primaries, 3 replicas).

Channels are picked so that their hash slots live on chosen primaries. The tests check the
wire (which node holds which shard subscription: ``PUBSUB SHARDCHANNELS`` and
``CLIENT LIST`` on every node), delivery, and what happens when the ground moves: a slot
migrated to another primary, a primary killed (its replica is promoted), a primary frozen
(the shard connection's liveness check). Each of those must end with the subscription
resubscribed where the slot now lives and a gap reported to exactly the affected
subscriptions (``gap_before`` on the next message, reconnect listeners, the bridge's
``resync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from gateway_redis import Message, RedisClient, RedisConfig, RedisUnavailable, Subscription
from tests.topologies import (
    ClusterTopology,
    begin_migration,
    finish_migration,
    ports_with_client,
    primaries,
)
from tests.websocket.wsutil import (
    Gateway,
    frames,
    gateway_env,
    mint,
    next_message,
    serve_app,
    subscribe,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SHARD = "gateway-redis-pubsub-shard"  # CLIENT SETNAME of the hub's shard connections
CLASSIC = "gateway-redis-pubsub"


@pytest.fixture
def own_cluster() -> Iterator[ClusterTopology]:
    """A cluster of the test's own, for tests that kill or freeze a node."""
    topo = ClusterTopology()
    try:
        yield topo
    finally:
        topo.cleanup()


def _config(topo: ClusterTopology, *sharded: str, **options: Any) -> RedisConfig:
    options.setdefault("probe_interval", 0.2)
    return RedisConfig(
        cluster_nodes=topo.addresses, sharded_channels=sharded or ("orders:*",), **options
    )


def channel_on(topo: ClusterTopology, port: int, stem: str, *, skip: int = 0) -> str:
    """A channel name ``stem<n>`` whose hash slot the primary on ``port`` owns."""
    live = next(n for n in topo.nodes if n.running)
    with redis.Redis(port=live.port, socket_timeout=1) as r:
        ranges = [(s, e, int(p[1])) for s, e, p, *_ in r.execute_command("CLUSTER SLOTS")]
    owned = [(s, e) for s, e, owner in ranges if owner == port]
    found = 0
    for i in range(100_000):
        name = f"{stem}{i}"
        slot = key_slot(name.encode())
        if any(s <= slot <= e for s, e in owned):
            if found == skip:
                return name
            found += 1
    raise AssertionError(f"no channel on {port}")


def shard_channels(port: int) -> set[str]:
    """``PUBSUB SHARDCHANNELS`` of one node."""
    with redis.Redis(port=port, socket_timeout=2) as r:
        return {c.decode() for c in r.execute_command("PUBSUB", "SHARDCHANNELS")}


def all_ports(topo: ClusterTopology) -> list[int]:
    return [n.port for n in topo.nodes]


async def receive(sub: Subscription, timeout: float = 3.0) -> Message:
    return await asyncio.wait_for(anext(sub), timeout)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def cluster_publisher(topo: ClusterTopology) -> AsyncIterator[RedisCluster]:
    """Another service's redis-py cluster client (SPUBLISH routed by slot)."""
    publisher = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in topo.addresses],
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    try:
        yield publisher
    finally:
        await publisher.aclose()


async def publish_until_received(
    client: RedisClient, sub: Subscription, timeout: float, start: int = 0
) -> tuple[Message, float]:
    """Publish ``{"seq": n}`` on the subscription's channel every 50 ms until one arrives;
    returns the first message received and the seconds it took.

    Arrival, not SPUBLISH's receiver count: a replica serves SPUBLISH for its primary's
    slots (counting its own subscribers only) and passes the message on to the shard, so a
    publisher whose slot map still names the old primary, now a replica, sees 0.
    """
    (channel,) = sub.channels
    started = time.monotonic()
    seq = start
    while True:
        seq += 1
        with contextlib.suppress(RedisUnavailable):
            await client.publish(channel, {"seq": seq})
        with contextlib.suppress(asyncio.TimeoutError):
            return await receive(sub, 0.05), time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{channel} never resubscribed"


# -- delivery -------------------------------------------------------------------------------


async def test_sharded_round_trip_on_every_shard(cluster: ClusterTopology) -> None:
    owners = primaries(cluster)
    names = [channel_on(cluster, p.port, "orders:") for p in owners]
    async with (
        RedisClient(_config(cluster)) as subscriber,
        RedisClient(_config(cluster)) as publisher,
        cluster_publisher(cluster) as other_service,
    ):
        sub = await subscriber.subscribe(*names)
        # Each channel is subscribed on the primary owning its slot, one shard connection
        # per primary, next to the one classic connection.
        for primary, name in zip(owners, names, strict=True):
            assert name in shard_channels(primary.port)
        holders = ports_with_client(all_ports(cluster), SHARD)
        assert sorted(holders) == sorted(p.port for p in owners)
        assert len(ports_with_client(all_ports(cluster), CLASSIC)) == 1
        await wait_for(lambda: subscriber.pubsub.connected, 2, "every connection live")
        stats = subscriber.pubsub.stats()
        assert (stats.sharded_channels, stats.shard_connections) == (3, 3)

        for i, name in enumerate(names):
            assert await publisher.publish(name, {"i": i}) == 1  # SPUBLISH: that shard only
        got = {(m.channel, m.data["i"]) for m in [await receive(sub) for _ in names]}
        assert got == {(name, i) for i, name in enumerate(names)}

        # Another service's SPUBLISH arrives; a classic PUBLISH on the same name does not
        # (separate namespaces).
        assert await other_service.publish(names[0], "classic") == 0
        assert await other_service.spublish(names[1], '{"from":"go"}') == 1
        message = await receive(sub)
        assert (message.channel, message.data, message.gap_before) == (
            names[1],
            {"from": "go"},
            False,
        )
        await sub.close()
        placed = list(zip(owners, names, strict=True))
        await wait_for(
            lambda: not any(n in shard_channels(p.port) for p, n in placed),
            3,
            "SUNSUBSCRIBE on every node",
        )


async def test_classic_and_sharded_channels_in_one_process(
    cluster: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    orders = channel_on(cluster, primaries(cluster)[1].port, "orders:")
    async with RedisClient(_config(cluster)) as c, RedisClient(_config(cluster)) as publisher:
        mixed = await c.subscribe("news", orders)
        callback: list[Message] = []
        both = await c.pubsub.subscribe(orders, "news", on_message=callback.append)
        assert mixed.channels == ("news", orders)
        assert c.pubsub.stats().channels == 2  # reference counted: two Redis channels
        with pytest.raises(ValueError, match="only matches sharded channels"):
            await c.psubscribe("orders:*")
        with caplog.at_level(logging.WARNING, logger="gateway_redis.pubsub"):
            everything = await c.psubscribe("*")
        assert "may match sharded channels" in caplog.text
        try:
            assert await publisher.publish(orders, {"kind": "sharded"}) == 1
            assert await publisher.publish("news", {"kind": "classic"}) >= 1
            received = {(m.channel, m.data["kind"]) for m in [await receive(mixed) for _ in "ab"]}
            assert received == {(orders, "sharded"), ("news", "classic")}
            await wait_for(lambda: len(callback) == 2, 2, "callback deliveries")
            # The pattern gets the classic channel only.
            message = await receive(everything)
            assert (message.channel, message.pattern) == ("news", "*")
            with pytest.raises(asyncio.TimeoutError):
                await receive(everything, timeout=0.3)
            # hub.unsubscribe ends a sharded channel for every subscription of the process.
            await c.unsubscribe(orders)
            assert mixed.channels == both.channels == ("news",)
            await wait_for(lambda: c.pubsub.stats().sharded_channels == 0, 1, "unsubscribed")
        finally:
            for sub in (mixed, both, everything):
                await sub.close()


# -- the WebSocket bridge ---------------------------------------------------------------


async def test_bridge_delivers_a_sharded_channel_and_resyncs_when_its_slot_moves(
    cluster: ClusterTopology,
) -> None:
    from examples.realtime import create_app

    env = gateway_env("", GATEWAY_WS_PING_INTERVAL="0", GATEWAY_WS_IDLE_TIMEOUT="0")
    del env["REDIS_URL"]
    env["REDIS_CLUSTER_NODES"] = ",".join(f"{h}:{p}" for h, p in cluster.addresses)
    env["REDIS_SHARDED_CHANNELS"] = "notifications:*"
    user = "alice"
    channel = f"notifications:{user}"
    owner = cluster.primary_for_slot(key_slot(channel.encode())).port
    async with serve_app(create_app(env)) as gateway, cluster_publisher(cluster) as service:
        ws = await gateway.connect(mint(user))
        try:
            await subscribe(ws, channel)
            assert channel in shard_channels(owner)  # the gateway's shard connection
            assert await service.spublish(channel, json.dumps({"from": "service"})) == 1
            frame = await next_message(ws)
            assert (frame["channel"], frame["data"]) == (channel, {"from": "service"})
            # The gateway's own publish endpoint uses SPUBLISH for the sharded channel.
            await _http_publish(gateway, channel, {"from": "http"})
            frame = await next_message(ws)
            assert (frame["channel"], frame["data"]) == (channel, {"from": "http"})

            # The channel's slot moves to another primary: the socket is told to resync,
            # then gets every later message from the new owner.
            slot = key_slot(channel.encode())
            target = next(p for p in primaries(cluster) if p.port != owner)
            await asyncio.to_thread(begin_migration, cluster, slot, target.port)
            await asyncio.to_thread(finish_migration, cluster, slot, owner, target.port)
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while not any(f["type"] == "message" for f in seen):
                assert time.monotonic() < deadline, f"no message after the move: {seen}"
                await service.spublish(channel, json.dumps({"after": "move"}))
                with contextlib.suppress(asyncio.TimeoutError):
                    seen += await frames(ws, 0.1)
            kinds = [f["type"] for f in seen]
            assert kinds.index("resync") < kinds.index("message"), seen
            resync = next(f for f in seen if f["type"] == "resync")
            assert resync["channels"] == [channel]
            assert channel in shard_channels(target.port)
        finally:
            await ws.close()


async def _http_publish(gateway: Gateway, channel: str, body: dict[str, Any]) -> None:
    admin = mint("ops", roles=("admin",))
    async with httpx.AsyncClient(base_url=gateway.http, timeout=5) as http:
        response = await http.post(
            f"/api/channels/{channel}/publish",
            json=body,
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["receivers"] == 1


# -- the ground moves ------------------------------------------------------------------------


async def test_slot_migration_moves_the_subscription_with_a_gap(cluster: ClusterTopology) -> None:
    source = primaries(cluster)[0]
    name = channel_on(cluster, source.port, "orders:", skip=3)
    slot = key_slot(name.encode())
    target = next(p for p in primaries(cluster) if p.port != source.port)
    untouched = channel_on(cluster, target.port, "orders:", skip=3)
    async with RedisClient(_config(cluster)) as c:
        regained: list[float] = []
        c.pubsub.add_reconnect_listener(lambda: regained.append(time.monotonic()))
        sub = await c.subscribe(name)
        other = await c.subscribe(untouched)
        try:
            assert await c.publish(name, {"seq": 0}) == 1
            assert (await receive(sub)).data == {"seq": 0}

            await asyncio.to_thread(begin_migration, cluster, slot, target.port)
            # While the slot migrates the source still serves its shard channels.
            assert await c.publish(name, {"seq": 1}) == 1
            assert (await receive(sub)).data == {"seq": 1}
            moved_at = time.monotonic()
            await asyncio.to_thread(finish_migration, cluster, slot, source.port, target.port)

            message, took = await publish_until_received(c, sub, 10, start=1)
            assert message.gap_before, "the move must be reported as a gap"
            seq = message.data["seq"]
            with contextlib.suppress(asyncio.TimeoutError):  # published before it arrived
                while True:
                    seq = (await receive(sub, 0.2)).data["seq"]
            assert name in shard_channels(target.port)
            assert name not in shard_channels(source.port)
            await wait_for(lambda: bool(regained), 2, "the reconnect listeners")
            # Every later message arrives, without another gap.
            for n in range(seq + 1, seq + 20):
                assert await c.publish(name, {"seq": n}) == 1
            assert [(await receive(sub)).data["seq"] for _ in range(19)] == list(
                range(seq + 1, seq + 20)
            )
            assert sub.gaps == 1
            # A subscription on another slot was not disturbed.
            assert other.gaps == 0
            assert await c.publish(untouched, "still") == 1
            assert (await receive(other)).data == "still"
            print(
                f"\nslot {slot} moved {source.port} -> {target.port}: resubscribed on the "
                f"new owner {regained[0] - moved_at:.3f}s after SETSLOT NODE began; first "
                f"message after the move received {took:.3f}s after it ended"
            )
        finally:
            await sub.close()
            await other.close()


async def test_killed_primary_subscription_resumes_on_the_promoted_replica(
    own_cluster: ClusterTopology,
) -> None:
    topo = own_cluster
    async with RedisClient(_config(topo)) as c:
        await c.subscribe("warmup")  # the classic connection, to keep it off the victim
        classic = ports_with_client(all_ports(topo), CLASSIC)
        victim = next(p for p in primaries(topo) if p.port not in classic)
        survivor = next(p for p in primaries(topo) if p.port != victim.port)
        name = channel_on(topo, victim.port, "orders:")
        untouched = channel_on(topo, survivor.port, "orders:")
        lost: list[float] = []
        regained: list[float] = []
        c.pubsub.add_disconnect_listener(lambda: lost.append(time.monotonic()))
        c.pubsub.add_reconnect_listener(lambda: regained.append(time.monotonic()))
        sub = await c.subscribe(name)
        other = await c.subscribe(untouched)
        try:
            assert await c.publish(name, {"seq": 0}) == 1
            assert (await receive(sub)).data == {"seq": 0}

            killed_at = time.monotonic()
            await asyncio.to_thread(victim.kill)
            message, took = await publish_until_received(c, sub, 30)
            assert message.gap_before
            new_owner = topo.primary_for_slot(key_slot(name.encode()))
            assert new_owner.port != victim.port  # the replica was promoted
            assert name in shard_channels(new_owner.port)
            assert new_owner.port in ports_with_client(all_ports(topo), SHARD)
            assert lost
            assert lost[0] - killed_at < 1.0  # the drop is seen at once
            await wait_for(lambda: bool(regained), 2, "the reconnect listeners")
            assert c.pubsub.connected
            # The other shard's subscription saw no gap and still works.
            assert other.gaps == 0
            assert await c.publish(untouched, "still") == 1
            assert (await receive(other)).data == "still"
            print(
                f"\nprimary {victim.port} killed: subscription resumed on the promoted replica "
                f"{new_owner.port} {took:.2f}s after the kill (lost seen after "
                f"{lost[0] - killed_at:.3f}s, reconnect listeners after "
                f"{regained[0] - killed_at:.2f}s)"
            )
        finally:
            await sub.close()
            await other.close()


async def test_frozen_shard_node_is_noticed_by_its_liveness_check(
    own_cluster: ClusterTopology,
) -> None:
    topo = own_cluster
    async with RedisClient(_config(topo)) as c:
        await c.subscribe("warmup")
        classic = ports_with_client(all_ports(topo), CLASSIC)
        victim = next(p for p in primaries(topo) if p.port not in classic)
        name = channel_on(topo, victim.port, "orders:")
        sub = await c.subscribe(name)
        try:
            await wait_for(lambda: c.pubsub.connected and c.available, 5, "a healthy start")
            frozen_at = time.monotonic()
            await asyncio.to_thread(victim.freeze)
            # Nothing else talks to that node: only the shard connection's PING can tell.
            noticed = await wait_for(lambda: not c.pubsub.connected, 2.5, "the deaf shard")
            # One node, not the cluster: marked unreachable (calls routed to it fail fast)
            # rather than the whole client held down.
            assert c.backend.nodes is not None
            assert f"127.0.0.1:{victim.port}" in c.backend.nodes.unreachable
            await asyncio.to_thread(victim.thaw)
            message, _ = await publish_until_received(c, sub, 30)
            assert message.gap_before
            await wait_for(lambda: c.pubsub.connected and c.available, 5, "recovery")
            holders = [
                p for p in ports_with_client(all_ports(topo), SHARD) if name in shard_channels(p)
            ]
            owner = topo.primary_for_slot(key_slot(name.encode())).port
            print(
                f"\nprimary {victim.port} frozen: noticed after {noticed:.2f}s, subscription "
                f"back {time.monotonic() - frozen_at:.2f}s after the freeze, on node(s) "
                f"{holders}; the slot's primary is now {owner}"
            )
        finally:
            await sub.close()
