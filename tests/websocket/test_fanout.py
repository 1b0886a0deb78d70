"""Fan-out: several instances, Redis restarts, stalled readers, overflow policies."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection

from gateway_redis.embedded import EmbeddedRedis
from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import closed_with, frames, mint, request, subscribe

COUNT = 1000  # messages of ~32 KB for the overflow tests


async def test_publish_on_one_instance_reaches_sockets_on_another(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        listener = await b.connect(mint("bob"))
        await subscribe(listener, "system:broadcast", "notifications:bob")
        publisher = await a.connect(mint("alice", roles=("admin",)))
        for channel in ("system:broadcast", "notifications:bob"):
            reply = await request(
                publisher,
                {"type": "publish", "channel": channel, "data": {"to": channel}, "id": 1},
            )
            assert reply.pop("offset") == 1  # both channels keep history
            assert reply == {"type": "published", "epoch": reply["epoch"], "id": 1}
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            got.extend(f for f in await frames(listener) if f["type"] == "message")
        for frame in got:
            assert frame.pop("offset") == 1
            assert isinstance(frame.pop("epoch"), str)
        assert got == [
            {"type": "message", "channel": "system:broadcast", "data": {"to": "system:broadcast"}},
            {"type": "message", "channel": "notifications:bob",
             "data": {"to": "notifications:bob"}},
        ]  # fmt: skip
        await listener.close()
        await publisher.close()


async def _publish_forever(url: str, channel: str, stop: asyncio.Event, sent: list[int]) -> None:
    """Publish 0, 1, 2... every 10 ms through its own connection, riding out outages."""
    admin = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        n = 0
        while not stop.is_set():
            try:
                await asyncio.to_thread(admin.publish, channel, json.dumps({"n": n}))
                sent.append(n)
                n += 1
            except redis.RedisError:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)
    finally:
        admin.close()


@pytest.mark.slow
async def test_redis_restart_mid_stream_sends_resync_then_messages(
    gateway_factory: GatewayFactory, fault_server: EmbeddedRedis
) -> None:
    async with gateway_factory(redis_url=fault_server.url) as gateway:
        ws = await gateway.connect(mint("bob"))
        await subscribe(ws, "system:broadcast", "notifications:bob")
        stop, sent = asyncio.Event(), list[int]()
        publisher = asyncio.create_task(
            _publish_forever(fault_server.url, "system:broadcast", stop, sent)
        )
        events: list[tuple[float, dict[str, Any]]] = []
        restarted_at = 0.0

        async def read_until(predicate: Any, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                for frame in await frames(ws, timeout=deadline - time.monotonic()):
                    events.append((time.monotonic(), frame))

        try:
            await read_until(lambda: sum(f["type"] == "message" for _, f in events) >= 10, 5)
            await asyncio.to_thread(fault_server.restart)
            restarted_at = time.monotonic()
            await read_until(lambda: any(f["type"] == "resync" for _, f in events), 10)
            resync_index = next(i for i, (_, f) in enumerate(events) if f["type"] == "resync")
            await read_until(
                lambda: sum(f["type"] == "message" for _, f in events[resync_index:]) >= 10, 10
            )
        finally:
            stop.set()
            await publisher
        resync_at, resync = events[resync_index]
        assert resync == {"type": "resync", "channels": ["notifications:bob", "system:broadcast"]}
        print(f"\nresync {resync_at - restarted_at:.3f}s after the server answered again")
        assert resync_at - restarted_at < 3.0
        numbers = [f["data"]["n"] for _, f in events if f["type"] == "message"]
        after = [f["data"]["n"] for _, f in events[resync_index:] if f["type"] == "message"]
        assert numbers == sorted(numbers)  # in order; a gap only where the resync is
        assert after
        assert after[-1] == max(numbers)
        # The socket stayed open the whole time and still works.
        assert await request(ws, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        await ws.close()


async def _drain(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame until none arrives for half a second."""
    got: list[dict[str, Any]] = []
    while True:
        try:
            got.extend(await frames(ws, timeout=0.5))
        except asyncio.TimeoutError:
            return got


async def _collect(ws: ClientConnection, count: int, timeout: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while sum(f["type"] == "message" for f in got) < count:
        got.extend(await frames(ws, timeout=max(0.01, deadline - time.monotonic())))
    return got


async def test_overflow_drops_oldest_and_sends_resync(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as gateway:
        assert gateway.app is not None
        stalled = await gateway.connect(mint("slow"), max_queue=1)
        reader = await gateway.connect(mint("fast"))
        await subscribe(stalled, "system:broadcast")
        await subscribe(reader, "system:broadcast")
        hub = gateway.app.state.redis.pubsub
        payload = "x" * 32_000
        collecting = asyncio.create_task(_collect(reader, COUNT, timeout=30))
        for i in range(COUNT):  # ~32 MB: more than kernel buffers and the outbox hold
            await hub.publish("system:broadcast", {"i": i, "pad": payload})
        got = await collecting
        assert [f["data"]["i"] for f in got if f["type"] == "message"] == list(range(COUNT))
        assert gateway.app.state.bridge.stats().dropped > 0
        rest = await _collect(stalled, 1, timeout=10)
        rest.extend(await _drain(stalled))
        kinds = [f["type"] for f in rest]
        assert "resync" in kinds
        numbers = [f["data"]["i"] for f in rest if f["type"] == "message"]
        assert numbers == sorted(numbers)
        assert numbers[-1] == COUNT - 1
        assert len(numbers) < COUNT
        await stalled.close()
        await reader.close()


async def test_overflow_policy_close_closes_1013(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(GATEWAY_WS_OVERFLOW="close") as gw:
        assert gw.app is not None
        stalled = await gw.connect(mint("slow"), max_queue=1)
        reader = await gw.connect(mint("fast"))
        await subscribe(stalled, "system:broadcast")
        await subscribe(reader, "system:broadcast")
        collecting = asyncio.create_task(_collect(reader, COUNT, timeout=30))
        for i in range(COUNT):
            await gw.app.state.redis.pubsub.publish("system:broadcast", {"i": i, "p": "x" * 32_000})
        got = await collecting
        assert len([f for f in got if f["type"] == "message"]) == COUNT
        deadline = time.monotonic() + 5
        while gw.app.state.bridge.stats().connections > 1:
            assert time.monotonic() < deadline, "the stalled socket was not closed"
            await asyncio.sleep(0.05)
        # 1013, or 1006 when the close frame could not get past the stalled buffers
        assert await closed_with(stalled, timeout=5) in (1013, 1006)
        await reader.close()
