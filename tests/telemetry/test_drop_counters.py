"""The drop counters, read through the SDK's in-memory metric reader while drops are forced.

``gateway.pubsub.dropped``: a library subscriber with a buffer of 2 that never reads, while
the hub publishes 40 messages to its channel: exactly 38 are dropped. ``gateway.ws.dropped``:
a WebSocket client that never reads, behind an outbox of 4 messages, while the gateway
publishes ~10 MB (more than kernel buffers hold): the counter moves by exactly what the
bridge counted, and by more than nothing. The reader is process-wide, so every check is a
difference.
"""

from __future__ import annotations

import asyncio
import time

from examples.realtime import create_app
from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from tests.conftest import Telemetry
from tests.websocket.wsutil import gateway_env, mint, serve_app, subscribe


def _total(telemetry: Telemetry, name: str) -> float:
    return sum(point.value for _, point in telemetry.points(name))  # type: ignore[attr-defined]


async def test_pubsub_dropped_counts_every_message_a_full_buffer_drops(
    telemetry: Telemetry, redis_config: RedisConfig
) -> None:
    sent, buffer = 40, 2
    async with RedisClient(redis_config) as client:
        hub = client.pubsub
        before = _total(telemetry, "gateway.pubsub.dropped")
        sub = await hub.subscribe("drops:slow", buffer_size=buffer)
        try:
            for i in range(sent):
                await client.pubsub.publish("drops:slow", {"i": i})
            deadline = time.monotonic() + 10
            while hub.stats().dropped < sent - buffer:
                assert time.monotonic() < deadline, f"only {hub.stats().dropped} dropped"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # nothing more arrives
            assert hub.stats().dropped == sent - buffer
            assert _total(telemetry, "gateway.pubsub.dropped") - before == sent - buffer
        finally:
            await sub.close()


async def test_ws_dropped_counts_messages_a_stalled_socket_loses(
    telemetry: Telemetry, redis_server: EmbeddedRedis
) -> None:
    app = create_app(gateway_env(redis_server.url, GATEWAY_WS_QUEUE_SIZE="4"))
    async with serve_app(app) as gateway:
        assert gateway.app is not None
        bridge = gateway.app.state.bridge
        before = _total(telemetry, "gateway.ws.dropped")
        stalled = await gateway.connect(mint("slow"), max_queue=1, close_timeout=1)
        try:
            await subscribe(stalled, "system:broadcast")
            hub = gateway.app.state.redis.pubsub
            payload = "x" * 32_000
            for i in range(300):  # ~10 MB: more than kernel buffers and the outbox hold
                await hub.publish("system:broadcast", {"i": i, "pad": payload})
            deadline = time.monotonic() + 15
            while bridge.stats().dropped == 0:
                assert time.monotonic() < deadline, "no message dropped"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # let the fan-out settle
            dropped = bridge.stats().dropped
            assert _total(telemetry, "gateway.ws.dropped") - before == dropped
        finally:
            await stalled.close()
