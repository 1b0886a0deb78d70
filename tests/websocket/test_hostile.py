"""Hostile clients: malformed, oversized and flooding frames; other users' channels."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed

from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import Gateway, closed_with, frames, mint, request, subscribe

MALFORMED = [
    ("{not json", None),
    ("[1, 2, 3]", None),
    ('"just a string"', None),
    ('{"type": "teleport", "id": 1}', 1),
    ('{"id": 2}', 2),
    ('{"type": 5, "id": 3}', 3),
    ('{"type": "subscribe", "channels": "system:broadcast", "id": 4}', 4),
    ('{"type": "subscribe", "channels": [], "id": 5}', 5),
    ('{"type": "subscribe", "channels": [1, 2], "id": 6}', 6),
    ('{"type": "subscribe", "channels": ["has space"], "id": 7}', 7),
    ('{"type": "subscribe", "channels": ["' + "x" * 200 + '"], "id": 8}', 8),
    ('{"type": "unsubscribe", "id": 9}', 9),
    ('{"type": "publish", "channel": ["a"], "data": 1, "id": 10}', 10),
    ('{"type": "publish", "channel": "system:broadcast", "id": 11}', 11),
    ('{"type": "publish", "channel": "system:broadcast", "data": NaN, "id": 12}', 12),
    ('{"type": "ping", "id": {"nested": true}}', None),
    ('{"type": "ping", "id": true}', None),
    ('{"type": "subscribe", "channels": ["gw:invalidate"], "id": 13}', 13),
    ("[" * 100_00 + "]" * 100_00, None),
]


async def test_malformed_frames_get_bad_request_and_the_socket_stays_usable(
    gateway: Gateway,
) -> None:
    async with await gateway.connect(mint("mallory")) as ws:
        for text, request_id in MALFORMED:
            await ws.send(text)
            (reply,) = await frames(ws)
            assert reply["type"] == "error", text
            assert reply["code"] == "bad_request", text
            assert reply.get("id") == request_id, text
            assert isinstance(reply["message"], str)
        await ws.send(b"\x00\x01binary")
        (reply,) = await frames(ws)
        assert reply["type"] == "error"
        assert reply["code"] == "bad_request"
        assert await request(ws, {"type": "ping", "id": 99}) == {"type": "pong", "id": 99}
        await subscribe(ws, "system:broadcast")


@pytest.mark.parametrize("server_limit", [65536, 1 << 20])
async def test_oversized_frames_close_1009(
    gateway_factory: GatewayFactory, server_limit: int
) -> None:
    # With uvicorn at 64 KiB uvicorn closes; with a larger server limit the bridge does.
    options = {"ws_max_size": server_limit}
    async with (
        gateway_factory(uvicorn_options=options) as gateway,
        await gateway.connect(mint("mallory")) as ws,
    ):
        await subscribe(ws, "system:broadcast")
        exactly = json.dumps({"type": "ping", "id": 1, "pad": ""})
        fits = exactly[:-2] + "x" * (65536 - len(exactly)) + '"}'
        assert len(fits.encode()) == 65536
        assert await request(ws, json.loads(fits)) == {"type": "pong", "id": 1}
        await ws.send(json.dumps({"type": "ping", "pad": "y" * 70_000}))
        assert await closed_with(ws, timeout=5) == 1009


async def test_a_flood_is_rate_limited_then_closed_1008(gateway: Gateway) -> None:
    async with await gateway.connect(mint("flooder")) as ws:
        codes: list[str] = []
        pongs = 0
        try:
            for i in range(2000):
                await ws.send(json.dumps({"type": "ping", "id": i}))
            while True:
                for frame in await frames(ws):
                    if frame["type"] == "pong":
                        pongs += 1
                    elif frame["type"] == "error":
                        codes.append(frame["code"])
        except ConnectionClosed:
            pass
        assert ws.close_code == 1008
        assert pongs >= 60  # the burst went through
        assert codes
        assert set(codes) == {"rate_limited"}


async def test_a_short_burst_is_only_rate_limited(gateway: Gateway) -> None:
    async with await gateway.connect(mint("eager")) as ws:
        for i in range(70):
            await ws.send(json.dumps({"type": "ping", "id": i}))
        replies: list[dict[str, object]] = []
        while len(replies) < 70:
            replies.extend(await frames(ws))
        limited = [r for r in replies if r["type"] == "error"]
        assert limited
        assert all(r["code"] == "rate_limited" for r in limited)
        assert {r["id"] for r in limited} <= set(range(70))
        assert await request(ws, {"type": "ping", "id": "after"}, timeout=5) in (
            {"type": "pong", "id": "after"},
            {"type": "error", "code": "rate_limited", "message": "Too many messages; slow down.",
             "id": "after"},
        )  # fmt: skip


async def test_other_users_channels_are_forbidden_without_detail(gateway: Gateway) -> None:
    bob, _ = await gateway.login("bob", "bob-password")
    async with await gateway.connect(bob) as ws:
        both = ["notifications:bob", "notifications:alice"]
        denied = [
            {"type": "subscribe", "channels": ["notifications:alice"], "id": 1},
            {"type": "subscribe", "channels": both, "id": 2},
            {"type": "subscribe", "channels": ["notifications"], "id": 3},
            {"type": "subscribe", "channels": ["notifications:bob:extra"], "id": 4},
            {"type": "subscribe", "channels": ["orders"], "id": 5},
            {"type": "publish", "channel": "system:broadcast", "data": {}, "id": 6},
            {"type": "publish", "channel": "notifications:bob", "data": {}, "id": 7},
        ]
        for frame in denied:
            reply = await request(ws, frame)
            assert reply == {
                "type": "error", "code": "forbidden", "message": "Not allowed.", "id": frame["id"],
            }  # fmt: skip
        # All or nothing: the allowed channel of request 2 was not subscribed either.
        reply = await request(ws, {"type": "unsubscribe", "channels": ["notifications:bob"]})
        assert reply["type"] == "unsubscribed"
        await subscribe(ws, "notifications:bob", "system:broadcast")
