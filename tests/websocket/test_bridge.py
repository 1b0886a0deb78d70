"""The bridge in a minimal Starlette app: sharing, limits, outages, telemetry, settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from middleware import Gateway as ComposedGateway
from middleware import (
    JWTAuthenticator,
    JWTSettings,
    SessionManager,
    WebSocketSettings,
)
from middleware.websocket.bridge import WebSocketBridge, WebSocketLimits
from middleware.websocket.channels import ChannelPolicy, ChannelRule
from tests.conftest import Telemetry
from tests.twins import MemorySessionStore, MemoryValidator
from tests.websocket.wsutil import (
    AUDIENCE,
    ISSUER,
    SECRET,
    Gateway,
    frames,
    mint,
    next_message,
    request,
    serve_app,
    subscribe,
)

OPEN_POLICY = ChannelPolicy([ChannelRule("*", subscribe=True, publish=True)])


@contextlib.asynccontextmanager
async def bridge_app(
    client: RedisClient, *, limits: WebSocketLimits | None = None
) -> AsyncIterator[tuple[Gateway, WebSocketBridge]]:
    """Starlette + JWT middleware + the bridge with a permissive policy (on ``/ws``)."""
    settings = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)
    websocket = WebSocketSettings(policy=OPEN_POLICY, limits=limits or WebSocketLimits())
    composed = ComposedGateway(client, jwt=settings, websocket=websocket)
    app = Starlette(lifespan=composed.lifespan)  # closes the bridge; the client is ours
    composed.install(app)
    app.state.bus = composed.bus
    assert composed.bridge is not None
    async with serve_app(app) as gateway:
        yield gateway, composed.bridge


async def test_many_sockets_on_a_channel_are_one_hub_subscription(client: RedisClient) -> None:
    async with bridge_app(client) as (gateway, bridge):
        sockets = await asyncio.gather(*(gateway.connect(mint(f"s{i}")) for i in range(50)))
        before = client.pubsub.stats().subscriptions
        # All at once: concurrent first subscribers share one confirmed subscription.
        await asyncio.gather(*(subscribe(ws, "shared:channel") for ws in sockets))
        assert client.pubsub.stats().subscriptions == before + 1
        assert bridge.stats().channels == 1
        assert await client.publish("shared:channel", {"hello": "all"}) == 1
        results = await asyncio.gather(*(next_message(ws) for ws in sockets))
        assert all(r["data"] == {"hello": "all"} for r in results)
        for ws in sockets[:-1]:
            await request(ws, {"type": "unsubscribe", "channels": ["shared:channel"]})
        assert client.pubsub.stats().subscriptions == before + 1
        await sockets[-1].close()
        deadline = asyncio.get_running_loop().time() + 5
        while client.pubsub.stats().subscriptions != before:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        assert bridge.stats().channels == 0
        for ws in sockets[:-1]:
            await ws.close()


async def test_channel_limit_per_socket(client: RedisClient) -> None:
    limits = WebSocketLimits(max_channels=3)
    async with (
        bridge_app(client, limits=limits) as (gateway, _),
        await gateway.connect(mint("greedy")) as ws,
    ):
        await subscribe(ws, "a", "b")
        reply = await request(ws, {"type": "subscribe", "channels": ["c", "d"], "id": 1})
        assert reply["code"] == "limit_exceeded"
        await subscribe(ws, "a", "c")  # "a" again costs nothing
        reply = await request(ws, {"type": "subscribe", "channels": list("abcd"), "id": 2})
        assert reply["code"] == "bad_request"  # more than 3 in one request


async def test_subscribing_while_redis_is_down_says_unavailable(
    fault_server: EmbeddedRedis,
) -> None:
    config = RedisConfig(url=fault_server.url, dial_timeout=0.3, operation_timeout=0.5)
    async with RedisClient(config) as client, bridge_app(client) as (gateway, _):  # noqa: SIM117
        async with await gateway.connect(mint("patient")) as ws:
            await subscribe(ws, "before")
            fault_server.kill()
            deadline = asyncio.get_running_loop().time() + 5
            while client.pubsub.connected:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            reply = await request(ws, {"type": "subscribe", "channels": ["during"], "id": 1})
            assert reply == {
                "type": "error", "code": "unavailable",
                "message": "Temporarily unavailable; retry shortly.", "id": 1,
            }  # fmt: skip
            reply = await request(ws, {"type": "publish", "channel": "x", "data": 1, "id": 2})
            assert reply["code"] == "unavailable"
            await asyncio.to_thread(fault_server.start)
            resync = None
            while resync is None:
                for frame in await frames(ws, timeout=10):
                    if frame["type"] == "resync":
                        resync = frame
            assert resync == {"type": "resync", "channels": ["before"]}
            await subscribe(ws, "during")
            while not client.available:  # the command pool's probe follows the hub's
                assert asyncio.get_running_loop().time() < deadline + 10
                await asyncio.sleep(0.02)
            await client.publish("during", 1)
            assert (await next_message(ws))["data"] == 1


async def test_connect_and_delivery_are_traced(client: RedisClient, telemetry: Telemetry) -> None:
    from gateway_redis.telemetry import tracer

    async with bridge_app(client) as (gateway, bridge):
        connections = _sum(telemetry, "gateway.ws.connections")
        async with await gateway.connect(mint("traced")) as ws:
            await subscribe(ws, "traced:channel")
            assert _sum(telemetry, "gateway.ws.connections") == connections + 1
            with tracer.start_as_current_span("test publisher"):
                await client.publish("traced:channel", {"x": 1})
            assert (await next_message(ws))["data"] == {"x": 1}
        spans = telemetry.spans.get_finished_spans()
        connect = [s for s in spans if s.name == "gateway.ws connect"]
        assert connect
        assert connect[-1].attributes is not None
        assert connect[-1].attributes["gateway.ws.outcome"] == "accepted"
        (publish,) = [s for s in spans if s.name == "gateway.pubsub publish"]
        (deliver,) = [s for s in spans if s.name == "gateway.ws deliver"]
        assert deliver.kind is SpanKind.CONSUMER
        assert deliver.parent is not None
        assert publish.context is not None
        assert deliver.parent.span_id == publish.context.span_id
        assert deliver.context is not None
        assert deliver.context.trace_id == publish.context.trace_id
        assert deliver.attributes is not None
        assert deliver.attributes["gateway.ws.receivers"] == 1
        assert bridge.stats().queued == 0
        assert telemetry.points("gateway.ws.queued")


def _sum(telemetry: Telemetry, name: str) -> int:
    return sum(int(getattr(point, "value", 0)) for _, point in telemetry.points(name))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queue_size": 0}, "queue_size"),
        ({"max_message_bytes": 10}, "max_message_bytes"),
        ({"overflow": "explode"}, "overflow"),
        ({"rate": 0}, "rate"),
        ({"ping_interval": 30.0, "idle_timeout": 10.0}, "longer"),
        ({"max_connections_per_user": True}, "max_connections_per_user"),
        ({"close_timeout": -1}, "close_timeout"),
    ],
)
def test_limits_are_validated(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WebSocketLimits(**kwargs)


async def test_bridge_settings_are_validated(client: RedisClient) -> None:
    with pytest.raises(ValueError, match="policy"):
        WebSocketBridge(client=client, policy=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="origin"):
        WebSocketBridge(client=client, policy=OPEN_POLICY, allowed_origins=["evil.example"])
    with pytest.raises(ValueError, match="origin"):
        WebSocketBridge(client=client, policy=OPEN_POLICY, allowed_origins="http://a.example")
    with pytest.raises(ValueError, match="origin_check"):
        WebSocketBridge(client=client, policy=OPEN_POLICY, origin_check="never")  # type: ignore[arg-type]
    bridge = WebSocketBridge(client=client, policy=OPEN_POLICY)
    # The library's own channels are never exposed, whatever the policy says.
    assert not bridge.policy.valid_name("gw:invalidate")
    assert bridge.policy.valid_name("anything:else")
    await bridge.aclose()
    await bridge.aclose()


async def test_bridge_refuses_components_that_would_not_hear_this_clients_events(
    client: RedisClient,
) -> None:
    with pytest.raises(ValueError, match="authenticator"):
        WebSocketBridge(
            client=client,
            policy=OPEN_POLICY,
            authenticator=JWTAuthenticator(MemoryValidator(), client=None),
        )
    with pytest.raises(ValueError, match="sessions"):
        WebSocketBridge(
            client=client,
            policy=OPEN_POLICY,
            sessions=SessionManager(store=MemorySessionStore()),
        )
