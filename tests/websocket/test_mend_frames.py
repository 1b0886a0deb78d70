"""A channel's gap mended by the bridge (its own Redis subscription lost): its sockets get
the very frames, byte for byte, that a client recovering the same range gets (both splice
the stored JSON text into frames, never decoded), or ``resync`` when one read of history
cannot fill the gap (real uvicorn, real ``websockets`` clients, real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from websockets.asyncio.client import ClientConnection

from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from tests.websocket.test_recovery import history_app, read, subscribe
from tests.websocket.wsutil import mint

CHANNEL = "hist:mend-frames"
BATCH = '{"type":"batch","messages":['
VALUES: list[Any] = [
    {"b": 1, "a": "é\u2028"},
    None,
    "s",
    [0.5, {"_gw": {}, "data": 1}],
    12345678901234567890,
    -0.0,
    1e-7,
    {"emoji": "😀", "escaped": '"\\/\n\t'},
    "",
    {},
]


def texts(raw: str) -> list[str]:
    """The text of a frame, or of each frame a ``batch`` joins, exactly as sent."""
    if not raw.startswith(BATCH):
        return [raw]
    found, at, decoder = [], len(BATCH), json.JSONDecoder()
    while raw[at] != "]":
        end = decoder.raw_decode(raw, at)[1]
        found.append(raw[at:end])
        at = end + (raw[end] == ",")
    return found


async def receive(ws: ClientConnection, into: list[str], count: int) -> None:
    """Read frames until ``into`` holds ``count`` (server pings dropped)."""
    while len(into) < count:
        raw = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(raw, str)
        into.extend(t for t in texts(raw) if json.loads(t)["type"] != "ping")


async def test_a_mend_sends_the_frames_a_recover_sends(
    client: RedisClient, redis_admin: Any
) -> None:
    history, tracer = ChannelHistory(client, size=1000, ttl=60), TracerProvider().get_tracer("t")

    async def publish(value: Any, traced: bool) -> None:
        with tracer.start_as_current_span("p") if traced else contextlib.nullcontext():
            await history.publish(CHANNEL, value)  # traced: trace headers in the envelope

    async def publish_all() -> None:  # at once: they go out while the subscription is down
        await asyncio.gather(*(publish(v, i % 2 == 1) for i, v in enumerate(VALUES)))

    async with history_app(client) as (gateway, bridge):
        ws = await gateway.connect(mint("hana"))
        reply, early = await subscribe(ws, CHANNEL)
        assert early == []
        start = reply["positions"][CHANNEL]
        mended: list[str] = []
        await publish_all()  # live: the bridge knows the channel's position from then on
        await receive(ws, mended, len(VALUES))
        for round_ in range(3):
            redis_admin.client_kill_filter(_type="pubsub")  # the bridge's subscription
            await publish_all()
            await receive(ws, mended, len(VALUES) * (round_ + 2))
        assert bridge.client.pubsub.stats().reconnects >= 3

        recovering = await gateway.connect(mint("hana"))
        frame = {"type": "subscribe", "channels": [CHANNEL], "id": 2, "recover": {CHANNEL: start}}
        await recovering.send(json.dumps(frame))
        recovered: list[str] = []
        await receive(recovering, recovered, len(mended) + 1)
        assert json.loads(recovered[0])["recovered"] == {CHANNEL: True}
        for socket in (ws, recovering):
            await socket.close()

    frames = [json.loads(t) for t in mended]
    assert [f["type"] for f in frames] == ["message"] * len(frames)  # no resync
    offsets = [f["offset"] for f in frames]
    assert offsets == list(range(start["offset"] + 1, start["offset"] + len(frames) + 1))
    assert sorted(map(json.dumps, (f["data"] for f in frames))) == sorted(
        map(json.dumps, VALUES * 4)
    )
    assert mended == recovered[1:]  # byte for byte


@pytest.mark.parametrize("missed", [30, 60])
async def test_a_gap_only_history_knows_is_mended_in_one_read_else_resync(
    missed: int, client: RedisClient, redis_server: EmbeddedRedis, redis_admin: Any
) -> None:
    # A publisher that shards the channel writes the same history (same stream, same
    # offsets) but SPUBLISHes: the bridge's SUBSCRIBE never sees those messages, so once
    # its subscription comes back only history knows them. The bridge reads at most its
    # rule's history_size (50) at once: beyond that it tells the sockets to resync.
    channel = f"hist:only-history-{missed}"
    history = ChannelHistory(client, size=1000, ttl=60)
    sharding = RedisConfig(url=redis_server.url, sharded_channels=(channel,))
    frames: list[dict[str, Any]] = []
    async with RedisClient(sharding) as other, history_app(client) as (gateway, _):
        unseen = ChannelHistory(other, size=1000, ttl=60)
        ws = await gateway.connect(mint("ines"))
        reply, early = await subscribe(ws, channel)
        assert early == []
        start = reply["positions"][channel]["offset"]

        async def read_until(found: Any) -> None:
            while not any(found(f) for f in frames):
                frames.extend(await read(ws, timeout=10))

        await history.publish(channel, {"seq": 0})  # live: the bridge knows the position
        await read_until(lambda f: f["data"] == {"seq": 0})
        for seq in range(1, missed + 1):
            assert (await unseen.publish(channel, {"seq": seq})).receivers == 0
        redis_admin.client_kill_filter(_type="pubsub")  # the bridge's subscription
        if missed <= 50:
            await read_until(lambda f: f.get("data") == {"seq": missed})
        else:
            await read_until(lambda f: f["type"] == "resync")
        await history.publish(channel, {"seq": missed + 1})
        await read_until(lambda f: f.get("data") == {"seq": missed + 1})
        await ws.close()
    kinds = [f["type"] for f in frames]
    seqs = [f["data"]["seq"] for f in frames if f["type"] == "message"]
    offsets = [f["offset"] - start for f in frames if f["type"] == "message"]
    if missed <= 50:  # mended: every message once, in order, no resync
        assert kinds == ["message"] * (missed + 2)
        assert seqs == list(range(missed + 2))
        assert offsets == list(range(1, missed + 3))
    else:
        assert kinds == ["message", "resync", "message"]
        assert seqs == [0, missed + 1]
        assert offsets == [1, missed + 2]
