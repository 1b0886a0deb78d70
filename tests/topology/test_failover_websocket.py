"""WebSocket clients of a real gateway ride out a Redis failover: Sentinel and Cluster.

The example gateway (``examples.realtime.create_app``) runs under uvicorn on a real
topology, configured by ``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER`` or
``REDIS_CLUSTER_NODES`` as docs/production.md documents; real ``websockets`` clients subscribe
to a channel while an independent redis-py publisher sends a numbered message every few
milliseconds. Then the server that holds the gateway's subscriber connection is killed
(SIGKILL). Each test asserts that

* no socket is closed,
* every client gets a ``resync`` frame naming the channel (messages may have been lost),
* nothing published after the kill reaches a client before its ``resync``,
* every message published after the clients were told is delivered to every client,
  in order and exactly once, and one published through the gateway's HTTP endpoint too,

and prints the time from the kill to the ``resync`` and to the first message delivered
after it, with the publisher's error count and the messages lost in the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.topologies import (
    MASTER,
    ClusterTopology,
    SentinelTopology,
    cluster_topology,
    ports_with_client,
    primaries,
    sentinel_topology,
)
from tests.websocket.wsutil import Gateway, gateway_env, mint, serve_app, subscribe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CHANNEL = "system:broadcast"  # everyone may subscribe (examples.realtime policy)
CLIENTS = 4
PUBLISH_EVERY = 0.01  # seconds between publishes
SUBSCRIBER_NAME = "gateway-redis-pubsub"  # CLIENT SETNAME of the hub's connection


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topo:
        yield topo


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    with cluster_topology() as topo:
        yield topo


def _env(**redis: str) -> dict[str, str]:
    """The gateway's environment with Redis given by ``REDIS_*`` variables only."""
    # Heartbeat off: this test is about Redis, not idle sockets.
    env = gateway_env("", GATEWAY_WS_PING_INTERVAL="0", GATEWAY_WS_IDLE_TIMEOUT="0")
    del env["REDIS_URL"]
    return {**env, **redis}


@contextlib.asynccontextmanager
async def _gateway(**redis: str) -> AsyncIterator[Gateway]:
    from examples.realtime import create_app

    async with serve_app(create_app(_env(**redis))) as gateway:
        yield gateway


@dataclass
class Recorder:
    """Reads one socket until it closes, timestamping every frame (batches unwrapped)."""

    ws: ClientConnection
    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    closed_at: float | None = None

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                for f in frame["messages"] if frame["type"] == "batch" else [frame]:
                    self.frames.append((now, f))
        except ConnectionClosed:
            pass
        self.closed_at = time.perf_counter()

    def seqs(self, after: float = 0.0) -> list[int]:
        return [
            f["data"]["seq"]
            for t, f in self.frames
            if t > after
            and f["type"] == "message"
            and isinstance(f.get("data"), dict)
            and "seq" in f["data"]
        ]

    def first(self, kind: str, after: float) -> float | None:
        return next((t for t, f in self.frames if t > after and f["type"] == kind), None)

    def resyncs(self, after: float) -> list[tuple[float, dict[str, Any]]]:
        return [(t, f) for t, f in self.frames if t > after and f["type"] == "resync"]


@dataclass
class Publisher:
    """Publishes ``{"seq": n}`` on the channel every ``PUBLISH_EVERY`` seconds."""

    publish: Callable[[str], Awaitable[int]]
    sent: list[tuple[int, float]] = field(default_factory=list)  # (seq, started) acknowledged
    failed: list[float] = field(default_factory=list)
    stop: bool = False

    async def run(self) -> None:
        seq = 0
        while not self.stop:
            seq += 1
            started = time.perf_counter()
            try:
                await asyncio.wait_for(self.publish(json.dumps({"seq": seq})), 1.0)
            except (RedisError, OSError, asyncio.TimeoutError):
                self.failed.append(started)
                await asyncio.sleep(0.05)
                continue
            self.sent.append((seq, started))
            await asyncio.sleep(PUBLISH_EVERY)


async def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _ride_out_failover(
    label: str,
    gateway: Gateway,
    publish: Callable[[str], Awaitable[int]],
    kill: Callable[[], None],
) -> None:
    """The scenario shared by both topologies (see the module docstring)."""
    sockets = [await gateway.connect(mint(f"viewer{i}")) for i in range(CLIENTS)]
    for ws in sockets:
        await subscribe(ws, CHANNEL)
    recorders = [Recorder(ws) for ws in sockets]
    readers = [asyncio.create_task(r.run()) for r in recorders]
    publisher = Publisher(publish)
    publishing = asyncio.create_task(publisher.run())
    client = gateway.app.state.redis
    down: list[float] = []  # sample times at which the gateway's client failed fast

    async def watch_availability() -> None:
        while True:
            if not client.available:
                down.append(time.perf_counter())
            await asyncio.sleep(0.01)

    watching = asyncio.create_task(watch_availability())
    try:
        # Traffic flows before the fault.
        await _wait_for(lambda: all(len(r.seqs()) >= 20 for r in recorders), 10, "traffic")

        killed_at = time.perf_counter()  # figures count from here
        await asyncio.to_thread(kill)
        dead_at = time.perf_counter()  # anything published from here on is post-fault

        def resynced(r: Recorder) -> bool:
            return any(CHANNEL in f["channels"] for _, f in r.resyncs(killed_at))

        await _wait_for(lambda: all(resynced(r) for r in recorders), 20, "resync on every socket")
        told_at = [
            next(t for t, f in r.resyncs(killed_at) if CHANNEL in f["channels"]) for r in recorders
        ]
        await _wait_for(
            lambda: all(len(r.seqs(t)) >= 20 for r, t in zip(recorders, told_at, strict=True)),
            15,
            "messages after the resync",
        )

        # The gateway's own publish endpoint works again too (its client may still be
        # failing fast for a moment after the fault: retry briefly on 503).
        admin = mint("ops", roles=("admin",))
        async with httpx.AsyncClient(base_url=gateway.http, timeout=5) as http:
            refused = 0
            while True:
                response = await http.post(
                    f"/api/channels/{CHANNEL}/publish",
                    json={"via": "http"},
                    headers={"Authorization": f"Bearer {admin}"},
                )
                if response.status_code != 503 or refused == 100:
                    break
                refused += 1
                await asyncio.sleep(0.05)
        assert response.status_code == 200, response.text

        def got_http(r: Recorder) -> bool:
            return any(f.get("data") == {"via": "http"} for _, f in r.frames)

        await _wait_for(
            lambda: all(got_http(r) for r in recorders),
            5,
            "the HTTP-published message",
        )
    finally:
        publisher.stop = True
        await publishing
        watching.cancel()
    await asyncio.sleep(0.3)  # let the last acknowledged messages arrive

    # No socket was closed by the fault.
    for r in recorders:
        assert r.closed_at is None, f"socket closed: {r.ws.close_code} {r.ws.close_reason}"
    for reader in readers:
        reader.cancel()
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)

    # Before the fault every message arrived; after the last client was told, every
    # message arrived everywhere, in order, exactly once; and nothing published after
    # the fault reached a client before its resync ("resync, then messages").
    started_at = dict(publisher.sent)
    last_told = max(told_at)
    after = [seq for seq, started in publisher.sent if started > last_told]
    before = [seq for seq, started in publisher.sent if started < killed_at - 0.5]
    assert len(after) >= 20
    lost_in_gap: list[int] = []
    for r, told in zip(recorders, told_at, strict=True):
        got = r.seqs()
        assert got == sorted(set(got)), "messages duplicated or out of order"
        received = set(got)
        missing = sorted(set(after) - received)
        assert not missing, f"published after the resync, never delivered: {missing[:10]}"
        assert set(before) <= received
        early = [
            (s, round(started_at[s] - dead_at, 3), round(t - dead_at, 3))
            for t, f in r.frames
            if f["type"] == "message"
            and killed_at < t < told
            and (s := f["data"].get("seq")) in started_at
            and started_at[s] > dead_at
        ]
        assert not early, f"post-fault messages (seq, sent, got) before the resync: {early}"
        lost_in_gap.append(len(set(started_at) - received))

    to_resync = [t - killed_at for t in told_at]
    to_message = [
        next(t for t, f in r.frames if t > told and f["type"] == "message") - killed_at
        for r, told in zip(recorders, told_at, strict=True)
    ]
    resyncs = [len(r.resyncs(killed_at)) for r in recorders]
    failed_after = [t for t in publisher.failed if t > killed_at]
    outage = min((s for _, s in publisher.sent if s > killed_at), default=killed_at) - killed_at
    print(
        f"\n{label}: {CLIENTS} sockets, all stayed open; kill -> resync "
        f"{min(to_resync):.2f}-{max(to_resync):.2f}s; kill -> first message after it "
        f"{min(to_message):.2f}-{max(to_message):.2f}s; resync frames per socket {resyncs}; "
        f"publisher: {len(publisher.sent)} acknowledged, {len(failed_after)} failed, "
        f"outage {outage:.2f}s; messages lost in the gap per socket {lost_in_gap}; "
        f"HTTP publish answered 503 {refused} times before 200; gateway client failing fast "
        + (
            f"from {min(down) - killed_at:.2f}s to {max(down) - killed_at:.2f}s after the kill"
            if down
            else "never"
        )
    )


# -- Sentinel ------------------------------------------------------------------------------


async def test_websocket_clients_ride_out_a_sentinel_failover(sentinel: SentinelTopology) -> None:
    # A publisher of its own, following the primary through the sentinels.
    fast: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    sentinels = Sentinel(list(sentinel.addresses), sentinel_kwargs=fast, **fast)  # type: ignore[no-untyped-call]
    primary = sentinels.master_for(MASTER, retry=Retry(NoBackoff(), 0), **fast)
    old_port = sentinel.master_address()[1]
    try:
        sentinels_env = ",".join(f"{h}:{p}" for h, p in sentinel.addresses)
        async with _gateway(REDIS_SENTINELS=sentinels_env, REDIS_SENTINEL_MASTER=MASTER) as gateway:
            # The gateway's subscriber sits on the primary.
            assert ports_with_client([old_port], SUBSCRIBER_NAME) == [old_port]
            await _ride_out_failover(
                "sentinel failover",
                gateway,
                lambda payload: primary.publish(CHANNEL, payload),
                sentinel.node(old_port).kill,
            )
            # Sentinels learn the switch from each other within a couple of seconds.
            new_port = (await asyncio.to_thread(sentinel.wait_failover, old_port, 10))[1]
            assert ports_with_client([new_port], SUBSCRIBER_NAME) == [new_port]
    finally:
        await primary.aclose()
        await sentinels.aclose()


# -- Cluster -------------------------------------------------------------------------------


async def test_websocket_clients_ride_out_losing_the_subscriber_node(
    cluster: ClusterTopology,
) -> None:
    ports = [n.port for n in cluster.nodes]
    nodes = ",".join(f"{h}:{p}" for h, p in cluster.addresses)
    async with _gateway(REDIS_CLUSTER_NODES=nodes) as gateway:
        holders = ports_with_client(ports, SUBSCRIBER_NAME)
        assert len(holders) == 1, holders
        victim = next(n for n in cluster.nodes if n.port == holders[0])
        role = "primary" if victim in primaries(cluster) else "replica"
        # Classic PUBLISH reaches every node's subscribers over the cluster bus. Another
        # service publishes through one node that stays up: messages sent through
        # different nodes travel different links and may arrive out of order (a cluster
        # client sends a keyless PUBLISH to whichever node it picks, and may pick another
        # one after a topology change), which is not what this test is about.
        through = next(n for n in primaries(cluster) if n.port != victim.port)
        publisher = Redis(host=through.host, port=through.port, socket_timeout=0.5)
        try:
            await _ride_out_failover(
                f"cluster {role} {victim.port} (holding the subscriber) killed",
                gateway,
                lambda payload: publisher.publish(CHANNEL, payload),
                victim.kill,
            )
        finally:
            await publisher.aclose()
        moved_to = ports_with_client([p for p in ports if p != victim.port], SUBSCRIBER_NAME)
        assert len(moved_to) == 1, moved_to
        print(f"subscriber moved from node {victim.port} to node {moved_to[0]}")
