"""Channels with history on the bridge: positions, offsets on message frames, and a
reconnecting client recovering what it missed, exactly once and in order (real uvicorn,
real ``websockets`` clients, real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection

from gateway_redis import ChannelHistory, Position, RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from middleware import Gateway as ComposedGateway
from middleware import JWTSettings, WebSocketSettings
from middleware.websocket._recovery import RECOVER_BYTES, Histories
from middleware.websocket.bridge import WebSocketBridge
from middleware.websocket.channels import ChannelPolicy, ChannelRule
from tests.websocket.wsutil import AUDIENCE, ISSUER, SECRET, Gateway, mint, serve_app

POLICY = ChannelPolicy(
    [
        ChannelRule("hist:*", subscribe=True, publish=True, history_size=50, history_ttl=60),
        ChannelRule("plain:*", subscribe=True, publish=True),
    ]
)


@contextlib.asynccontextmanager
async def history_app(client: RedisClient) -> AsyncIterator[tuple[Gateway, WebSocketBridge]]:
    settings = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)
    composed = ComposedGateway(client, jwt=settings, websocket=WebSocketSettings(policy=POLICY))
    app = Starlette(lifespan=composed.lifespan)
    composed.install(app)
    assert composed.bridge is not None
    async with serve_app(app) as gateway:
        yield gateway, composed.bridge


async def read(ws: ClientConnection, timeout: float = 5) -> list[dict[str, Any]]:
    """The next frame, ``batch`` unwrapped; server pings dropped."""
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    got = frame["messages"] if frame["type"] == "batch" else [frame]
    return [f for f in got if f["type"] != "ping"]


async def subscribe(
    ws: ClientConnection, channel: str, recover: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``subscribed`` reply and the messages that came in the same read as it."""
    frame: dict[str, Any] = {"type": "subscribe", "channels": [channel], "id": 1}
    if recover is not None:
        frame["recover"] = {channel: recover}
    await ws.send(json.dumps(frame))
    while True:
        got = await read(ws)
        for i, f in enumerate(got):
            if f["type"] in ("subscribed", "error"):
                return f, got[i + 1 :]


async def test_positions_offsets_and_published_replies(client: RedisClient) -> None:
    async with history_app(client) as (gateway, _):
        ws = await gateway.connect(mint("alice"))
        reply, _ = await subscribe(ws, "hist:a")
        position = reply["positions"]["hist:a"]
        assert position["offset"] == 0
        assert "recovered" not in reply
        await ws.send(json.dumps({"type": "publish", "channel": "hist:a", "data": "x", "id": 2}))
        seen: list[dict[str, Any]] = []
        while len(seen) < 2:
            seen.extend(await read(ws))
        published = next(f for f in seen if f["type"] == "published")
        message = next(f for f in seen if f["type"] == "message")
        assert published == {"type": "published", "epoch": position["epoch"], "offset": 1, "id": 2}
        assert message == {
            "type": "message", "channel": "hist:a", "data": "x",
            "offset": 1, "epoch": position["epoch"],
        }  # fmt: skip
        # a channel without history: no positions, no offsets
        reply, _ = await subscribe(ws, "plain:a")
        assert reply == {"type": "subscribed", "channels": ["plain:a"], "id": 1}  # unchanged
        await ws.close()


async def test_reconnect_with_recover_gets_every_message_once_in_order(
    client: RedisClient,
) -> None:
    history = ChannelHistory(client, size=50, ttl=60)
    async with history_app(client) as (gateway, _):
        sent = 0
        stop = asyncio.Event()

        async def publisher() -> None:  # a steady rate, through the drops and reconnects
            nonlocal sent
            while not stop.is_set() and sent < 2000:
                sent += 1
                await history.publish("hist:seq", {"seq": sent})
                await asyncio.sleep(0.002)

        received: list[int] = []
        ws = await gateway.connect(mint("bob"))
        reply, early = await subscribe(ws, "hist:seq")
        last = reply["positions"]["hist:seq"]
        task = asyncio.create_task(publisher())
        try:
            for _round in range(4):
                deadline = time.monotonic() + 0.3
                frames = list(early)
                while time.monotonic() < deadline:
                    with contextlib.suppress(asyncio.TimeoutError):
                        frames.extend(await read(ws, timeout=0.1))
                for f in frames:
                    assert f["type"] == "message", f
                    received.append(f["data"]["seq"])
                    assert f["offset"] == f["data"]["seq"]  # the channel's first publisher
                    last = {"epoch": f["epoch"], "offset": f["offset"]}
                await ws.close()  # dropped; messages keep coming meanwhile
                await asyncio.sleep(0.1)
                ws = await gateway.connect(mint("bob"))
                reply, early = await subscribe(ws, "hist:seq", recover=last)
                assert reply["recovered"] == {"hist:seq": True}, reply
        finally:
            stop.set()
            await task
        # what is still on its way
        target = sent
        frames = list(early)
        while (frames and frames[-1]["data"]["seq"] < target) or not frames:
            frames.extend(await read(ws))
            if received and frames and frames[-1]["data"]["seq"] >= target:
                break
        received.extend(f["data"]["seq"] for f in frames)
        await ws.close()
    dups = [x for i, x in enumerate(received) if i and received[i - 1] >= x]
    assert received == list(range(1, target + 1)), (dups, len(received), target)


async def test_beyond_the_window_or_another_epoch_is_not_recovered(client: RedisClient) -> None:
    history = ChannelHistory(client, size=50, ttl=60)
    async with history_app(client) as (gateway, _):
        ws = await gateway.connect(mint("carol"))
        reply, _ = await subscribe(ws, "hist:big")
        start = reply["positions"]["hist:big"]
        await ws.close()
        for i in range(60):  # more than the 50 kept
            await history.publish("hist:big", i)
        ws = await gateway.connect(mint("carol"))
        reply, early = await subscribe(ws, "hist:big", recover=start)
        assert reply["recovered"] == {"hist:big": False}
        assert reply["positions"]["hist:big"] == {"epoch": start["epoch"], "offset": 60}
        assert early == []
        # the last kept one can be given back; an unknown epoch cannot
        reply, early = await subscribe(ws, "hist:b2", recover={"epoch": "nope", "offset": 0})
        assert reply["recovered"] == {"hist:b2": False}
        await history.publish("hist:big", "new")
        frame = (await read(ws))[0]
        assert (frame["data"], frame["offset"]) == ("new", 61)
        await ws.close()
        ws = await gateway.connect(mint("carol"))
        reply, early = await subscribe(ws, "hist:big", recover={**start, "offset": 11})
        assert reply["recovered"] == {"hist:big": True}
        while len(early) < 50:
            early.extend(await read(ws))
        assert [f["offset"] for f in early] == list(range(12, 62))
        await ws.close()


async def test_recovered_frames_are_the_live_frames(client: RedisClient) -> None:
    # Recovery splices the stored JSON text into frames without decoding it (issue 15):
    # what a recovering socket gets is, field for field and in order, what a live one got.
    history, tracer = ChannelHistory(client, size=50, ttl=60), TracerProvider().get_tracer("t")
    values: list[Any] = [{"b": 1, "a": "é\u2028"}, None, "s", [0.5, {"_gw": {}, "data": 1}]]
    async with history_app(client) as (gateway, _):
        live = await gateway.connect(mint("dave"))
        reply, got = await subscribe(live, "hist:same")
        for i, value in enumerate(values):
            with tracer.start_as_current_span("r") if i % 2 else contextlib.nullcontext():
                await history.publish("hist:same", value)  # traced: trace headers kept too
        while len(got) < len(values):
            got.extend(await read(live))
        ws = await gateway.connect(mint("dave"))
        again, early = await subscribe(ws, "hist:same", recover=reply["positions"]["hist:same"])
        while len(early) < len(values):
            early.extend(await read(ws))
        assert again["recovered"] == {"hist:same": True}
        assert [list(f.items()) for f in early] == [list(f.items()) for f in got]
        assert [f["data"] for f in early] == values
        await live.close()
        await ws.close()


async def test_bad_recover_requests_are_refused(client: RedisClient) -> None:
    async with history_app(client) as (gateway, _):
        ws = await gateway.connect(mint("dave"))
        for recover in (
            {"hist:other": {"epoch": "e", "offset": 1}},  # not a channel of the request
            {"hist:x": {"epoch": "e", "offset": -1}},
            {"hist:x": {"epoch": "", "offset": 1}},
            {"hist:x": {"epoch": "e", "offset": True}},
            {"hist:x": [1]},
            [1],
        ):
            frame = {"type": "subscribe", "channels": ["hist:x"], "recover": recover, "id": 9}
            await ws.send(json.dumps(frame))
            (reply,) = await read(ws)
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad_request", 9)
        # recover on a channel without history: not recovered
        reply, _ = await subscribe(ws, "plain:x", recover={"epoch": "e", "offset": 1})
        assert reply["recovered"] == {"plain:x": False}
        await ws.close()


async def test_the_bridge_mends_its_own_lost_subscription_from_history(
    client: RedisClient, redis_admin: Any
) -> None:
    history = ChannelHistory(client, size=1000, ttl=60)
    async with history_app(client) as (gateway, bridge):
        ws = await gateway.connect(mint("erin"))
        _, early = await subscribe(ws, "hist:mend")
        assert early == []
        sent = 0

        async def publish(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                sent += 1
                await history.publish("hist:mend", {"seq": sent})
                await asyncio.sleep(0.002)

        frames: list[dict[str, Any]] = []

        async def read_until(seq: int) -> None:
            while not any(f.get("data", {}).get("seq") == seq for f in frames):
                frames.extend(await read(ws, timeout=10))

        await publish(20)
        await read_until(20)
        for _round in range(3):
            # the bridge's subscriber connection dies; messages go on meanwhile
            redis_admin.client_kill_filter(_type="pubsub")
            await publish(50)
            await read_until(sent)
        await ws.close()
    assert [f["type"] for f in frames] == ["message"] * len(frames)  # no resync
    assert [f["data"]["seq"] for f in frames] == list(range(1, sent + 1))
    assert [f["offset"] for f in frames] == list(range(1, sent + 1))
    assert bridge.client.pubsub.stats().reconnects >= 3


async def test_what_one_subscribe_may_recover_is_bounded(client: RedisClient) -> None:
    history = ChannelHistory(client, size=50, ttl=60)
    async with history_app(client) as (gateway, _):
        ws = await gateway.connect(mint("frank"))
        reply, _ = await subscribe(ws, "hist:big-a")
        start = reply["positions"]["hist:big-a"]
        await ws.close()
        chunk = "x" * (RECOVER_BYTES // 40)
        for _ in range(45):  # more than RECOVER_BYTES in all, within the 50 kept
            await history.publish("hist:big-a", chunk)
        ws = await gateway.connect(mint("frank"))
        reply, early = await subscribe(ws, "hist:big-a", recover=start)
        assert reply["recovered"] == {"hist:big-a": False}
        assert early == []
        await ws.close()


@pytest.mark.parametrize("persistent", [True, False])
async def test_a_redis_restart_is_mended_from_persisted_history_else_resync(
    persistent: bool, tmp_path: Any
) -> None:
    args = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    server = EmbeddedRedis(args=args, directory=tmp_path)
    server.start()
    try:
        async with RedisClient(RedisConfig(url=server.url, probe_interval=0.2)) as client:
            history = ChannelHistory(client, size=1000, ttl=60)
            async with history_app(client) as (gateway, _):
                ws = await gateway.connect(mint("gina"))
                await subscribe(ws, "hist:restart")
                frames: list[dict[str, Any]] = []

                async def publish(first: int, count: int) -> None:
                    deadline = time.monotonic() + 20
                    n = first
                    while n < first + count:
                        try:
                            # a retry after a lost reply must not publish twice
                            key = f"seq-{n}"
                            await history.publish("hist:restart", {"seq": n}, idempotency_key=key)
                            n += 1
                        except RedisUnavailable:
                            assert time.monotonic() < deadline, "Redis did not come back"
                            await asyncio.sleep(0.05)

                async def read_until(seq: int) -> None:
                    while not any(f.get("data", {}).get("seq") == seq for f in frames):
                        frames.extend(await read(ws, timeout=15))

                await publish(1, 10)
                await read_until(10)
                await asyncio.to_thread(server.restart)  # the bridge's subscription is lost
                await publish(11, 10)
                if persistent:
                    await read_until(20)
                else:  # told to resync; what follows it arrives
                    while not any(f["type"] == "resync" for f in frames):
                        frames.extend(await read(ws, timeout=15))
                    await publish(21, 5)
                    await read_until(25)
                await ws.close()
    finally:
        server.cleanup()
    kinds = [f["type"] for f in frames]
    seqs = [f["data"]["seq"] for f in frames if f["type"] == "message"]
    if persistent:  # the history came back with Redis: mended, nothing lost, no resync
        assert kinds == ["message"] * 20, seqs
        assert seqs == list(range(1, 21))
    else:  # a new epoch: the gap cannot be filled, so the client is told
        assert kinds.count("resync") == 1
        assert seqs[:10] == list(range(1, 11))
        assert seqs == sorted(set(seqs))
        assert seqs[-5:] == list(range(21, 26))


async def test_a_subscribe_storm_shares_its_position_reads(
    redis_server: EmbeddedRedis, redis_admin: Any
) -> None:
    """300 sockets subscribing to one history channel at once, on a pool of 2 connections:
    every one is answered ``subscribed`` with the channel's position, at the cost of a few
    reads (one per turn of the read, not one per socket, which emptied the pool)."""
    sockets = 300
    config = RedisConfig(url=redis_server.url, pool_size=2, pool_timeout=0.2)
    async with RedisClient(config) as client, history_app(client) as (gateway, _):
        history = ChannelHistory(client, size=50, ttl=60)
        for n in range(3):
            await history.publish("hist:storm", {"n": n})
        clients = []
        for start in range(0, sockets, 50):
            clients += await asyncio.gather(
                *(gateway.connect(mint(f"storm-{i}")) for i in range(start, start + 50))
            )
        before = int(redis_admin.info("stats")["total_commands_processed"])
        replies = await asyncio.gather(*(subscribe(ws, "hist:storm") for ws in clients))
        commands = int(redis_admin.info("stats")["total_commands_processed"]) - before
        assert [r["type"] for r, _ in replies] == ["subscribed"] * sockets, replies[0]
        offsets = {r["positions"]["hist:storm"]["offset"] for r, _ in replies}
        assert offsets == {3}
        print(f"{commands} commands for {sockets} subscribes")
        assert commands < sockets // 3, commands  # 2 (INFO) + SUBSCRIBE + the reads
        await asyncio.gather(*(ws.close() for ws in clients))


class CountingHistory(ChannelHistory):
    """A real history that counts its position reads."""

    def __init__(self, client: RedisClient) -> None:
        super().__init__(client, size=50, ttl=60)
        self.reads = 0

    async def position(self, channel: str) -> Position:
        self.reads += 1
        return await super().position(channel)


async def test_subscribes_at_once_share_one_position_read(client: RedisClient) -> None:
    # A crowd subscribing at once (reconnecting after a deploy) reads each channel's position
    # once, not once per socket (which queued one command per socket for the pool).
    histories = Histories(client, POLICY)
    history = CountingHistory(client)
    first = await asyncio.gather(*(histories.position(history, "hist:crowd") for _ in range(30)))
    assert history.reads == 1
    assert len(set(first)) == 1
    # A caller that comes after the read was sent gets a read of its own: its subscription
    # may have missed what that read saw.
    await history.publish("hist:crowd", {"n": 1})
    early = asyncio.ensure_future(histories.position(history, "hist:crowd"))
    for _ in range(100):  # until the caller has asked and its read is sent
        if history.reads == 2:
            break
        await asyncio.sleep(0)
    assert history.reads == 2
    late = asyncio.ensure_future(histories.position(history, "hist:crowd"))
    both = await asyncio.gather(early, late)
    assert history.reads == 3
    assert [p.offset for p in both] == [first[0].offset + 1] * 2
