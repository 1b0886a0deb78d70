"""The bridge's server API (issue 15, "Live sockets"): ``bridge.sockets.disconnect``,
``unsubscribe`` and ``subscribe`` called on instance A act on the user's sockets on
instance B (two example gateways sharing one Redis), token and session sockets alike, and
leave other users alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway_redis import RedisClient, RedisConfig
from middleware import Gateway as ComposedGateway
from middleware import JWTSettings, WebSocketSettings
from middleware.websocket import (
    ChannelPolicy,
    ChannelRule,
    SocketControl,
    WebSocketBridge,
    WebSocketLimits,
)
from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import (
    AUDIENCE,
    ISSUER,
    SECRET,
    Gateway,
    closed_with,
    frames,
    mint,
    next_message,
    request,
    serve_app,
    subscribe,
)


async def told(ws: Any, timeout: float = 2) -> list[dict[str, Any]]:
    """The next frames other than presence's join/leave (the example's channels send them)."""
    while True:
        got = [f for f in await frames(ws, timeout) if f["type"] not in ("join", "leave")]
        if got:
            return got


async def alive(ws: Any, request_id: int) -> bool:
    reply = await request(ws, {"type": "ping", "id": request_id})
    return reply == {"type": "pong", "id": request_id}


async def quiet(ws: Any, seconds: float) -> list[dict[str, Any]]:
    """Frames other than join/leave received within ``seconds`` (none expected)."""
    got: list[dict[str, Any]] = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            got += [f for f in await frames(ws, seconds) if f["type"] not in ("join", "leave")]
    return got


async def test_disconnect_on_a_closes_the_users_sockets_on_b_with_4000(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert a.app is not None
        token, cookie = await a.login("bob", "bob-password")
        bobs = [await b.connect(token), await b.connect(cookie=cookie), await a.connect(token)]
        alice = await b.connect(mint("alice"))
        for ws in (*bobs, alice):
            await subscribe(ws, "system:broadcast")
        control: SocketControl = a.app.state.bridge.sockets
        await control.disconnect("bob", "account suspended")
        for ws in bobs:
            assert await closed_with(ws, timeout=2) == 4000
            assert ws.close_reason == "account suspended"
        assert await alive(alice, 1)
        await alice.close()


async def test_unsubscribe_on_a_removes_the_channel_from_the_users_sockets_on_b(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert a.app is not None
        bob = await b.connect(mint("bob"))
        alice = await b.connect(mint("alice"))
        await subscribe(bob, "system:broadcast", "notifications:bob")
        await subscribe(alice, "system:broadcast")
        await a.app.state.bridge.sockets.unsubscribe("bob", "system:broadcast", "moderated")
        assert await told(bob) == [
            {"type": "unsubscribed", "channels": ["system:broadcast"], "reason": "moderated"}
        ]
        redis = a.app.state.redis
        await redis.publish("system:broadcast", {"n": 1})
        await redis.publish("notifications:bob", {"n": 2})
        assert (await next_message(bob))["data"] == {"n": 2}  # not the broadcast
        assert (await next_message(alice))["data"] == {"n": 1}
        await a.app.state.bridge.sockets.unsubscribe("bob", "notifications:bob")
        assert await told(bob) == [
            {"type": "unsubscribed", "channels": ["notifications:bob"], "reason": "server"}
        ]
        for ws in (bob, alice):
            await ws.close()


async def test_subscribe_on_a_subscribes_the_users_sockets_on_b_without_asking_the_policy(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert a.app is not None
        token, cookie = await a.login("bob", "bob-password")
        bobs = [await b.connect(token), await b.connect(cookie=cookie)]
        carol = await b.connect(mint("carol"))
        # Bob may not subscribe to another user's notifications himself...
        refused = await request(
            bobs[0], {"type": "subscribe", "channels": ["notifications:alice"], "id": 1}
        )
        assert refused["code"] == "forbidden"
        # ...but the server may subscribe him.
        await a.app.state.bridge.sockets.subscribe("bob", "notifications:alice")
        for ws in bobs:
            assert await told(ws) == [{"type": "subscribed", "channels": ["notifications:alice"]}]
        await a.app.state.redis.publish("notifications:alice", {"for": "alice"})
        for ws in bobs:
            assert await next_message(ws) == {
                "type": "message", "channel": "notifications:alice", "data": {"for": "alice"}
            }  # fmt: skip
        assert await quiet(carol, 0.5) == []
        # Subscribing again changes nothing and says nothing.
        await a.app.state.bridge.sockets.subscribe("bob", "notifications:alice")
        assert await quiet(bobs[0], 0.5) == []
        assert b.app.state.bridge.stats().channels == 1
        for ws in (*bobs, carol):
            await ws.close()


async def test_bad_arguments_are_refused(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as gateway:
        assert gateway.app is not None
        control: SocketControl = gateway.app.state.bridge.sockets
        with pytest.raises(ValueError, match="user"):
            await control.disconnect("", "why")
        with pytest.raises(ValueError, match="reason"):
            await control.disconnect("bob", "x" * 124)
        with pytest.raises(ValueError, match="channel"):
            await control.subscribe("bob", "gw:invalidate")  # the library's own channel
        with pytest.raises(ValueError, match="channel"):
            await control.unsubscribe("bob", "bad name with spaces")
        with pytest.raises(ValueError, match="reason"):
            await control.unsubscribe("bob", "system:broadcast", "")


async def test_the_example_admin_route_disconnects_a_user_on_every_instance(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        bob = await b.connect(mint("bob"))
        alice = await b.connect(mint("alice"))
        path = "/api/admin/sockets/bob/disconnect"
        async with httpx.AsyncClient(base_url=a.http) as http:
            as_bob = await http.post(path, headers={"Authorization": f"Bearer {mint('bob')}"})
            assert as_bob.status_code == 403  # admin:read needed
            assert await alive(bob, 1)
            admin = {"Authorization": f"Bearer {mint('root', roles=('admin',))}"}
            response = await http.post(path, headers=admin)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "disconnected"}
        assert await closed_with(bob, timeout=2) == 4000
        assert bob.close_reason == "disconnected by an administrator"
        assert await alive(alice, 2)
        await alice.close()


async def test_a_server_subscribe_racing_the_clients_own_leaks_no_subscription(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gateway:
        assert gateway.app is not None
        bridge = gateway.app.state.bridge
        ws = await gateway.connect(mint("bob"))
        for request_id, channel in enumerate(("notifications:bob", "system:broadcast")):
            frame = {"type": "subscribe", "channels": [channel], "id": request_id}
            await ws.send(json.dumps(frame))  # both wait for the same Redis confirmation
            await bridge.sockets.subscribe("bob", channel)
            replies = await quiet(ws, 0.5)  # the reply, maybe the server's "subscribed" too
            # (a channel with history adds its "positions" to the reply: not looked at here)
            replies = [{k: v for k, v in r.items() if k != "positions"} for r in replies]
            assert {"type": "subscribed", "channels": [channel], "id": request_id} in replies
            assert bridge.stats().channels == request_id + 1
        both = ["notifications:bob", "system:broadcast"]
        reply = await request(ws, {"type": "unsubscribe", "channels": both, "id": 9})
        assert reply == {"type": "unsubscribed", "channels": both, "id": 9}
        assert bridge.stats().channels == 0  # every hub subscription released
        await ws.close()


@contextlib.asynccontextmanager
async def limited_instance(config: RedisConfig) -> AsyncIterator[tuple[Gateway, WebSocketBridge]]:
    """A gateway instance whose sockets hold at most two channels."""
    async with RedisClient(config) as client:
        composed = ComposedGateway(
            client,
            jwt=JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE),
            websocket=WebSocketSettings(
                policy=ChannelPolicy([ChannelRule("rooms:{room}", subscribe=True)]),
                limits=WebSocketLimits(max_channels=2),
            ),
        )
        app = Starlette(lifespan=composed.lifespan)
        composed.install(app)
        app.state.bus = composed.bus
        async with serve_app(app) as gateway:
            assert composed.bridge is not None
            yield gateway, composed.bridge


async def test_a_server_subscribe_respects_the_per_socket_channel_limit(
    redis_config: RedisConfig,
) -> None:
    async with (
        limited_instance(redis_config) as (_a, bridge_a),
        limited_instance(redis_config) as (b, _bridge_b),
    ):
        full = await b.connect(mint("dora"))
        await subscribe(full, "rooms:1", "rooms:2")
        roomy = await b.connect(mint("dora"))
        await subscribe(roomy, "rooms:1")
        await bridge_a.sockets.subscribe("dora", "rooms:3")
        assert await frames(roomy, 2) == [{"type": "subscribed", "channels": ["rooms:3"]}]
        assert await quiet(full, 0.5) == []  # at the limit: left as it was
        await bridge_a.client.publish("rooms:3", {"n": 3})
        assert (await next_message(roomy))["data"] == {"n": 3}
        assert await quiet(full, 0.5) == []
        for ws in (full, roomy):
            await ws.close()


async def test_a_server_granted_channel_survives_permission_re_checks_until_it_leaves(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert a.app is not None
        bob = await b.connect(mint("bob"))
        await subscribe(bob, "notifications:bob")
        control: SocketControl = a.app.state.bridge.sockets
        await control.subscribe("bob", "notifications:alice")  # the policy would refuse it
        assert await told(bob) == [{"type": "subscribed", "channels": ["notifications:alice"]}]
        reauth = b.app.state.bridge._reauth
        rounds = reauth.rounds
        await a.app.state.permissions.invalidate("bob")  # every channel of bob re-checked on B
        for _ in range(100):  # at most 5 s for B's re-check round
            if reauth.rounds != rounds:
                break
            await asyncio.sleep(0.05)
        assert reauth.rounds > rounds
        assert await quiet(bob, 0.3) == []  # nothing taken away
        await a.app.state.redis.publish("notifications:alice", {"still": True})
        assert (await next_message(bob))["data"] == {"still": True}
        # Once it left the socket, the policy decides again.
        await control.unsubscribe("bob", "notifications:alice")
        assert (await told(bob))[0]["type"] == "unsubscribed"
        again = {"type": "subscribe", "channels": ["notifications:alice"], "id": 3}
        assert (await request(bob, again))["code"] == "forbidden"
        await bob.close()
