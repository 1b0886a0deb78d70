"""Live subscriptions follow permission changes made on any instance (issue 13 item 8).

Two gateway instances (two clients, two bridges, two uvicorn servers) share one real Redis
and one permission source (a dict standing in for a database). A permission withdrawn and
announced on instance A unsubscribes the socket on instance B, which gets an
``unsubscribed`` frame with a reason; other channels and other users are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection

from gateway_redis import RedisClient, RedisConfig
from middleware import Gateway as ComposedGateway
from middleware import JWTSettings, SessionSettings, WebSocketSettings
from middleware.rbac.sources import CallablePermissions
from middleware.websocket.channels import ChannelPolicy, ChannelRule
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

POLICY = ChannelPolicy(
    [
        ChannelRule("rooms:{room}", subscribe="rooms:{room}:join"),
        ChannelRule("notifications:{sub}", subscribe=True),
    ]
)


class Directory:
    """The permission source both instances ask (a database in real life)."""

    def __init__(self) -> None:
        self.grants: dict[str, set[str]] = {}
        self.down = False
        self.gate: asyncio.Event | None = None  # set: answers wait for it (a slow source)
        self.entered = asyncio.Event()

    async def lookup(self, subject: str) -> set[str]:
        if self.down:
            raise ConnectionError("the directory is down")
        granted = set(self.grants.get(subject, ()))  # read now, answered later
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        return granted


async def _room_of_session(session: Any) -> set[str]:
    rooms = session.metadata.get("rooms", [])
    return {f"rooms:{room}:join" for room in rooms}


@contextlib.asynccontextmanager
async def instance(
    config: RedisConfig, directory: Directory, *, sessions: bool = False
) -> AsyncIterator[tuple[Gateway, ComposedGateway]]:
    """One gateway instance: its own client, bridge and uvicorn server."""
    async with RedisClient(config) as client:
        composed = ComposedGateway(
            client,
            jwt=JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE),
            permissions=CallablePermissions(directory.lookup),
            sessions=SessionSettings() if sessions else None,
            websocket=WebSocketSettings(
                policy=POLICY, session_permissions=_room_of_session if sessions else None
            ),
        )
        app = Starlette(lifespan=composed.lifespan)
        composed.install(app)
        app.state.bus = composed.bus
        async with serve_app(app) as gateway:
            yield gateway, composed


async def unsubscribed(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    """The next ``unsubscribed`` frame (other frames skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        for frame in await frames(ws, max(0.01, deadline - time.monotonic())):
            if frame["type"] == "unsubscribed":
                return frame


async def nothing_but_messages(ws: ClientConnection, seconds: float) -> None:
    """No ``unsubscribed`` (or any non-message frame) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            received = await frames(ws, left)
        except asyncio.TimeoutError:  # builtin TimeoutError only from 3.11
            return
        for frame in received:
            assert frame["type"] in ("message", "ping", "resync"), frame


async def test_permission_withdrawn_on_one_instance_unsubscribes_on_another(
    redis_config: RedisConfig,
) -> None:
    directory = Directory()
    directory.grants = {
        "carol": {"rooms:blue:join", "rooms:red:join"},
        "dave": {"rooms:blue:join"},
    }
    async with (
        instance(redis_config, directory) as (_a, gw_a),
        instance(redis_config, directory) as (b, _gw_b),
    ):
        assert gw_a.permissions is not None
        carol = await b.connect(mint("carol"))
        dave = await b.connect(mint("dave"))
        await subscribe(carol, "rooms:blue", "rooms:red", "notifications:carol")
        await subscribe(dave, "rooms:blue")

        directory.grants["carol"] = {"rooms:red:join"}
        started = time.monotonic()
        await gw_a.permissions.invalidate("carol")  # on the other instance
        frame = await unsubscribed(carol)
        assert frame == {"type": "unsubscribed", "channels": ["rooms:blue"], "reason": "forbidden"}
        assert time.monotonic() - started < 2.0
        # blue no longer reaches carol; red and dave's blue still flow.
        await gw_a.client.publish("rooms:blue", {"n": 1})
        await gw_a.client.publish("rooms:red", {"n": 2})
        assert (await next_message(carol))["channel"] == "rooms:red"
        assert (await next_message(dave))["data"] == {"n": 1}
        # A re-subscribe is refused like any other forbidden request.
        reply = await request(carol, {"type": "subscribe", "channels": ["rooms:blue"], "id": 7})
        assert reply["type"] == "error"
        assert reply["code"] == "forbidden"

        # A policy version bump re-checks everybody, on every instance.
        directory.grants = {}
        await gw_a.permissions.bump_policy_version()
        assert (await unsubscribed(carol))["channels"] == ["rooms:red"]
        assert (await unsubscribed(dave))["channels"] == ["rooms:blue"]
        # Channels that need no permission stay; so does the socket.
        await gw_a.client.publish("notifications:carol", {"n": 3})
        assert (await next_message(carol))["data"] == {"n": 3}
        assert await request(carol, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        await carol.close()
        await dave.close()


async def test_a_permission_source_outage_keeps_subscriptions_until_it_answers(
    redis_config: RedisConfig,
) -> None:
    directory = Directory()
    directory.grants = {"carol": {"rooms:blue:join"}}
    async with (
        instance(redis_config, directory) as (_a, gw_a),
        instance(redis_config, directory) as (b, _gw_b),
    ):
        assert gw_a.permissions is not None
        carol = await b.connect(mint("carol"))
        await subscribe(carol, "rooms:blue")
        directory.down = True
        directory.grants = {}
        await gw_a.permissions.invalidate("carol")
        # Unknown is not "denied": nothing is unsubscribed while the source is down.
        await gw_a.client.publish("rooms:blue", {"n": 1})
        assert (await next_message(carol))["data"] == {"n": 1}
        await nothing_but_messages(carol, 1.5)
        directory.down = False  # the re-check is retried and now takes effect
        frame = await unsubscribed(carol, timeout=5.0)
        assert frame["channels"] == ["rooms:blue"]
        await carol.close()


async def test_a_lost_version_bump_is_caught_up_when_the_bus_resyncs(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    directory = Directory()
    directory.grants = {"carol": {"rooms:blue:join"}}
    async with instance(redis_config, directory) as (b, gw_b):
        assert gw_b.permissions is not None
        carol = await b.connect(mint("carol"))
        await subscribe(carol, "rooms:blue")
        # A bump whose event this instance never heard (written behind its back) ...
        directory.grants = {}
        redis_admin.incr(gw_b.client.key("rbac:policy-version"))
        await nothing_but_messages(carol, 0.5)
        # ... is found when the bus resyncs (its subscriber connection was cut).
        redis_admin.client_kill_filter(_type="pubsub")
        frame = await unsubscribed(carol, timeout=5.0)
        assert frame["channels"] == ["rooms:blue"]
        await carol.close()


async def test_a_sessions_changed_data_re_authorizes_its_sockets(
    redis_config: RedisConfig,
) -> None:
    directory = Directory()
    async with (
        instance(redis_config, directory, sessions=True) as (_a, gw_a),
        instance(redis_config, directory, sessions=True) as (b, _gw_b),
    ):
        assert gw_a.sessions is not None
        session = await gw_a.sessions.create("erin", {"rooms": ["blue", "red"]})
        erin = await b.connect(cookie=f"__Host-session={session.id}")
        await subscribe(erin, "rooms:blue", "rooms:red")
        await gw_a.sessions.update(session.id, {"rooms": ["red"]})  # on the other instance
        frame = await unsubscribed(erin)
        assert frame == {"type": "unsubscribed", "channels": ["rooms:blue"], "reason": "forbidden"}
        await gw_a.client.publish("rooms:red", {"n": 1})
        assert (await next_message(erin))["data"] == {"n": 1}
        await erin.close()


async def test_a_subscribe_authorized_while_permissions_changed_is_checked_again(
    redis_config: RedisConfig,
) -> None:
    directory = Directory()
    directory.grants = {"carol": {"rooms:blue:join"}}
    async with instance(redis_config, directory) as (gateway, composed):
        assert composed.permissions is not None
        carol = await gateway.connect(mint("carol"))
        directory.gate = gate = asyncio.Event()
        await carol.send(json.dumps({"type": "subscribe", "channels": ["rooms:blue"], "id": 1}))
        await asyncio.wait_for(directory.entered.wait(), 5)  # authorizing, with old grants
        directory.grants = {}
        await composed.permissions.invalidate("carol")  # nothing subscribed yet to re-check
        await asyncio.sleep(0.2)
        directory.gate = None
        gate.set()  # the stale answer arrives: subscribed, then taken away again
        assert await request(carol, {"type": "ping", "id": 2}) == {
            "type": "subscribed",
            "channels": ["rooms:blue"],
            "id": 1,
        }
        frame = await unsubscribed(carol)
        assert frame == {"type": "unsubscribed", "channels": ["rooms:blue"], "reason": "forbidden"}
        await carol.close()
