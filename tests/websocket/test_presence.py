"""Presence over the WebSocket (issue 15): two example gateways in their own processes on
one Redis, sockets on both; ``presence`` / ``presence_stats`` requests, ``join`` /
``leave`` frames, a closed socket leaving within 5 s, and one instance killed (SIGKILL:
no leave is ever sent) whose sockets are gone within one presence TTL; presence of a
channel the socket may not subscribe to is refused; join/leave frames stop above a
channel's ``join_leave_limit``; with the write queue full (an in-process bridge), joins
are made by the heartbeat and leaves by the TTL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection

from gateway_redis import RedisClient
from gateway_redis.pubsub import ChannelPresence
from middleware import Gateway as ComposedGateway
from middleware import JWTSettings, WebSocketSettings
from middleware.websocket import ChannelPolicy, ChannelRule, WebSocketLimits
from middleware.websocket import _presence as presence_module
from tests.websocket.wsutil import (
    AUDIENCE,
    ISSUER,
    SECRET,
    frames,
    gateway_process,
    mint,
    serve_app,
    subscribe,
)

TTL = 3.0  # GATEWAY_WS_PRESENCE_TTL of both instances


@pytest.fixture(autouse=True)
def _empty_server(redis_admin: Any) -> None:
    """Each test counts from an empty server (``redis_admin`` flushes it): a gateway an
    earlier module killed leaves its sockets present for one TTL (30 s by default), as it
    should, and those would be counted here."""


_SEEN: dict[ClientConnection, list[dict[str, Any]]] = {}  # join/leave frames not yet taken


async def read(ws: ClientConnection, deadline: float) -> list[dict[str, Any]]:
    """The next frames; join/leave frames are also kept for :func:`events`."""
    got = await frames(ws, max(0.01, deadline - time.monotonic()))
    _SEEN.setdefault(ws, []).extend(f for f in got if f["type"] in ("join", "leave"))
    return got


async def events(ws: ClientConnection, kind: str, count: int, timeout: float = 5.0) -> list[Any]:
    """The next ``count`` frames of type ``kind`` (others skipped)."""
    deadline = time.monotonic() + timeout
    seen = _SEEN.setdefault(ws, [])
    while sum(f["type"] == kind for f in seen) < count:
        await read(ws, deadline)
    found = [f for f in seen if f["type"] == kind][:count]
    for frame in found:
        seen.remove(frame)
    return found


async def ask(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """``request``, skipping join/leave frames."""
    await ws.send(json.dumps(frame))
    return await reply_to(ws, frame["id"])


async def reply_to(ws: ClientConnection, request_id: int, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame carrying ``request_id`` (others skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        for frame in await read(ws, deadline):
            if frame.get("id") == request_id:
                return frame


async def stats(ws: ClientConnection, channel: str) -> tuple[int, int]:
    reply = await ask(ws, {"type": "presence_stats", "channel": channel, "id": 7})
    assert (reply["type"], reply["channel"]) == ("presence_stats", channel), reply
    return reply["connections"], reply["users"]


def rooms_app(client: RedisClient, *, presence_ttl: float) -> Starlette:
    """An in-process gateway whose ``rooms:*`` channels have presence."""
    policy = ChannelPolicy([ChannelRule("rooms:*", subscribe=True, presence=True)])
    jwt = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)
    limits = WebSocketLimits(presence_ttl=presence_ttl)
    websocket = WebSocketSettings(policy=policy, limits=limits)
    composed = ComposedGateway(client, jwt=jwt, websocket=websocket)
    app = Starlette(lifespan=composed.lifespan)
    composed.install(app)
    return app


async def test_presence_across_two_instances_one_killed(redis_server: Any) -> None:
    extra = {"GATEWAY_WS_PRESENCE_TTL": str(TTL)}
    with (
        gateway_process(redis_server.url, **extra) as (a, _),
        gateway_process(redis_server.url, **extra) as (b, proc_b),
    ):
        watcher = await a.connect(mint("watcher"))
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(watcher.close)
            await subscribe(watcher, "system:broadcast")
            on_a = await a.connect(mint("alice"))
            stack.push_async_callback(on_a.close)
            await subscribe(on_a, "system:broadcast")
            on_b = [await b.connect(mint(user)) for user in ("bob", "bob", "carol")]
            for ws in on_b:
                await subscribe(ws, "system:broadcast")
            # join frames, from both instances, reach the watcher on A
            joins = await events(watcher, "join", 5)  # its own too
            assert sorted(f["user"] for f in joins) == ["alice", "bob", "bob", "carol", "watcher"]
            assert all(f["channel"] == "system:broadcast" and f["conn"] for f in joins)
            assert await stats(watcher, "system:broadcast") == (5, 4)
            reply = await ask(on_b[0], {"type": "presence", "channel": "system:broadcast", "id": 3})
            assert (reply["id"], reply["channel"]) == (3, "system:broadcast")
            users = sorted(c["user"] for c in reply["clients"])
            assert users == ["alice", "bob", "bob", "carol", "watcher"]
            assert {f["conn"] for f in joins} == {c["conn"] for c in reply["clients"]}
            # a closed socket leaves within 5 s, with a leave frame
            alice_conn = next(f["conn"] for f in joins if f["user"] == "alice")
            await on_a.close()
            started = time.monotonic()
            (leave,) = await events(watcher, "leave", 1, timeout=5.0)
            assert leave == {
                "type": "leave",
                "channel": "system:broadcast",
                "user": "alice",
                "conn": alice_conn,
            }
            assert await stats(watcher, "system:broadcast") == (4, 3)
            assert time.monotonic() - started < 5.0
            # instance B dies without a word: its sockets are gone within one TTL
            proc_b.send_signal(signal.SIGKILL)
            proc_b.wait(10)
            killed = time.monotonic()
            while await stats(watcher, "system:broadcast") != (1, 1):
                assert time.monotonic() - killed < TTL + 1.5, "ghosts outlived the TTL"
                await asyncio.sleep(0.2)
            leaves = await events(watcher, "leave", 3, timeout=TTL + 2)
            assert sorted(f["user"] for f in leaves) == ["bob", "bob", "carol"]


async def test_presence_of_a_forbidden_channel_is_refused(redis_server: Any) -> None:
    with gateway_process(redis_server.url) as (gw, _):
        ws = await gw.connect(mint("alice"))
        try:
            await subscribe(ws, "notifications:alice")
            for kind in ("presence", "presence_stats"):
                reply = await ask(ws, {"type": kind, "channel": "notifications:bob", "id": 9})
                assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 9)
            mine = await ask(ws, {"type": "presence", "channel": "notifications:alice", "id": 2})
            assert [c["user"] for c in mine["clients"]] == ["alice"]
            bad = await ask(ws, {"type": "presence", "id": 4})
            assert (bad["type"], bad["code"]) == ("error", "bad_request")
        finally:
            await ws.close()


def test_presence_rules_and_limits_are_validated() -> None:
    rule = ChannelRule("rooms:{room}", subscribe=True, presence=True, join_leave=True)
    policy = ChannelPolicy([ChannelRule("rooms:lobby", subscribe=True), rule])
    assert policy.presence("rooms:lobby") is rule  # the first rule with presence decides
    assert policy.presence("other") is None
    with pytest.raises(ValueError, match="join_leave"):
        ChannelRule("a", subscribe=True, join_leave=True)
    with pytest.raises(ValueError, match="bools"):
        ChannelRule("a", presence=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="presence_ttl"):
        WebSocketLimits(presence_ttl=0.5)
    assert rule.join_leave_limit == 100
    for bad in (0, 1001, True, 2.0):
        with pytest.raises(ValueError, match="join_leave_limit"):
            ChannelRule("a", presence=True, join_leave=True, join_leave_limit=bad)  # type: ignore[arg-type]


async def test_join_leave_frames_stop_above_the_channels_limit(redis_server: Any) -> None:
    # join_leave_limit 2: the third socket's join is not sent (the channel would have 3
    # connections); its leave is (back to 2). Frames of one instance keep their order, so
    # a join sent for it would have come before its leave.
    with gateway_process(redis_server.url, GATEWAY_WS_JOIN_LEAVE_LIMIT="2") as (gw, _):
        watcher, other, third = [await gw.connect(mint(u)) for u in ("watcher", "other", "third")]
        try:
            await subscribe(watcher, "system:broadcast")
            await subscribe(other, "system:broadcast")
            joins = await events(watcher, "join", 2)
            assert sorted(f["user"] for f in joins) == ["other", "watcher"]
            await subscribe(third, "system:broadcast")
            assert await stats(watcher, "system:broadcast") == (3, 3)  # present all the same
            await third.close()
            (leave,) = await events(watcher, "leave", 1)
            assert leave["user"] == "third"
            assert [f for f in _SEEN[watcher] if f["type"] == "join"] == []
            assert await stats(watcher, "system:broadcast") == (2, 2)
        finally:
            for ws in (watcher, other, third):
                await ws.close()


async def test_unsubscribe_leaves_with_a_leave_frame(redis_server: Any) -> None:
    with gateway_process(redis_server.url) as (gw, _):
        watcher, leaver = await gw.connect(mint("watcher")), await gw.connect(mint("leaver"))
        try:
            await subscribe(watcher, "system:broadcast")
            await subscribe(leaver, "system:broadcast")
            (join,) = [f for f in await events(watcher, "join", 2) if f["user"] == "leaver"]
            reply = await ask(
                leaver, {"type": "unsubscribe", "channels": ["system:broadcast"], "id": 5}
            )
            assert reply["type"] == "unsubscribed"
            (leave,) = await events(watcher, "leave", 1)
            assert leave == {**join, "type": "leave"}
            assert await stats(watcher, "system:broadcast") == (1, 1)
        finally:
            await watcher.close()
            await leaver.close()


async def test_with_the_queue_full_the_heartbeat_joins_and_the_ttl_removes(
    client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queue of 0 entries: every join and leave a request queues is dropped (and
    # counted); subscribes are answered all the same, the heartbeat (every ttl / 3)
    # joins the sockets and the TTL removes the closed ones.
    monkeypatch.setattr(presence_module, "_MAX_PENDING", 0)
    async with serve_app(rooms_app(client, presence_ttl=1)) as gateway:
        sockets = await asyncio.gather(*(gateway.connect(mint(f"u{i}")) for i in range(6)))
        try:
            await asyncio.gather(*(subscribe(ws, "rooms:a") for ws in sockets))
            deadline = time.monotonic() + 5
            while await stats(sockets[0], "rooms:a") != (6, 6):
                assert time.monotonic() < deadline, "the heartbeat never joined them"
                await asyncio.sleep(0.1)
            for ws in sockets[3:]:
                await ws.close()
            deadline = time.monotonic() + 5
            while await stats(sockets[0], "rooms:a") != (3, 3):
                assert time.monotonic() < deadline, "the TTL never removed them"
                await asyncio.sleep(0.1)
        finally:
            for ws in sockets:
                await ws.close()


async def test_a_leave_being_written_at_shutdown_is_written_all_the_same(
    client: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket closes; its leave is being written when the bridge shuts down, which
    # cancels the presence task mid-write. The leave must not be lost with the task:
    # the final flush writes it (before, only leaves still queued were: the member stayed
    # present for a whole TTL, and a test reading the channel next saw a ghost).
    app = rooms_app(client, presence_ttl=60)
    store = ChannelPresence(client, ttl=60)
    original = ChannelPresence.leave
    held = asyncio.Event()

    async def leave_held_once(self: ChannelPresence, channel: str, conns: Any) -> Any:
        if not held.is_set():
            held.set()
            await asyncio.Event().wait()  # until the task is cancelled
        return await original(self, channel, conns)

    async with serve_app(app) as gateway:
        staying, leaving = [await gateway.connect(mint(u)) for u in ("staying", "leaving")]
        await subscribe(staying, "rooms:shutdown")
        await subscribe(leaving, "rooms:shutdown")
        assert await stats(staying, "rooms:shutdown") == (2, 2)
        monkeypatch.setattr(ChannelPresence, "leave", leave_held_once)
        await leaving.close()
        await asyncio.wait_for(held.wait(), 5)  # the leave is in flight
    # the gateway has shut down: "staying" was closed by it, "leaving" before it
    assert (await store.presence_stats("rooms:shutdown")).connections == 0
