"""Load against the example gateway in its own uvicorn process: 1,000 sockets on one
channel over one Redis connection, and a stalled reader that costs nothing.

``system:broadcast`` has presence with join/leave frames (the example's contract): the
readers skip those, and count them: a channel sends them only while it has at most
``join_leave_limit`` (100) connections, so 1,000 sockets joining cost at most 100 x 1,000
frames, not 1,000 x 1,000 / 2.

Bounded in count and time; loopback only. Figures are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection

from gateway_redis.embedded import EmbeddedRedis
from tests.websocket.wsutil import Gateway, frames, gateway_process, mint, rss_kib, subscribe

SOCKETS = 1000
MESSAGES = 20
JOIN_LEAVE_LIMIT = 100  # the example's rules (the ChannelRule default)
_presence_frames = [0]  # join/leave frames the readers skipped


async def _open_many(gateway: Gateway, count: int) -> list[ClientConnection]:
    tokens = [mint(f"load-{i}") for i in range(count)]
    sockets: list[ClientConnection] = []
    for start in range(0, count, 100):
        chunk = tokens[start : start + 100]
        sockets.extend(await asyncio.gather(*(gateway.connect(t) for t in chunk)))
    return sockets


async def _messages(ws: ClientConnection, count: int, timeout: float) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        for frame in await frames(ws, timeout=max(0.01, deadline - time.monotonic())):
            if frame["type"] in ("join", "leave"):
                _presence_frames[0] += 1
                continue
            assert frame["type"] == "message", frame
            got.append(frame["data"])
    return got


def _script_calls(admin: redis.Redis) -> int:
    stats: Any = admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


@pytest.mark.slow
async def test_1000_sockets_on_one_channel_share_one_redis_connection(
    redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    with gateway_process(redis_server.url) as (gateway, _proc):
        started = time.monotonic()
        sockets = await _open_many(gateway, SOCKETS)
        scripts = _script_calls(redis_admin)
        # all at once: presence writes are queued, never awaited by a subscribe, so none
        # is answered "unavailable" (subscribe() asserts the reply)
        await asyncio.gather(*(subscribe(ws, "system:broadcast") for ws in sockets))
        opened = time.monotonic() - started
        _presence_frames[0] = 0
        await asyncio.sleep(0.5)  # the last presence batch (for the figure only)
        scripts = _script_calls(redis_admin) - scripts
        try:
            pubsub_clients = redis_admin.client_list(_type="pubsub")
            assert len(pubsub_clients) == 1, pubsub_clients  # the gateway's hub, nothing else
            assert redis_admin.pubsub_numsub("system:broadcast") == [(b"system:broadcast", 1)]

            # One message to everyone: latency until the last socket has it.
            receiving = [asyncio.ensure_future(_messages(ws, 1, 30)) for ws in sockets]
            sent_at = time.monotonic()
            assert redis_admin.publish("system:broadcast", json.dumps({"n": -1})) == 1
            results = await asyncio.gather(*receiving)
            one = time.monotonic() - sent_at
            assert all(r == [{"n": -1}] for r in results)

            # A burst: every socket gets every message, in order.
            receiving = [asyncio.ensure_future(_messages(ws, MESSAGES, 60)) for ws in sockets]
            sent_at = time.monotonic()
            pipe = redis_admin.pipeline(transaction=False)
            for n in range(MESSAGES):
                pipe.publish("system:broadcast", json.dumps({"n": n, "pad": "x" * 200}))
            pipe.execute()
            results = await asyncio.gather(*receiving)
            burst = time.monotonic() - sent_at
            expected = [{"n": n, "pad": "x" * 200} for n in range(MESSAGES)]
            assert all(r == expected for r in results)
            assert _presence_frames[0] <= JOIN_LEAVE_LIMIT * SOCKETS
            print(
                f"\n{SOCKETS} sockets opened and subscribed in {opened:.2f}s; one message to all"
                f" in {one * 1000:.0f} ms; {MESSAGES} messages to all ({SOCKETS * MESSAGES}"
                f" deliveries) in {burst * 1000:.0f} ms (client and server on 2 cores);"
                f" {_presence_frames[0]} join/leave frames skipped; {scripts} script calls"
                " (history positions and presence joins) for the 1,000 subscribes"
            )
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


@pytest.mark.slow
async def test_a_stalled_reader_neither_slows_others_nor_grows_memory(
    redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    total, size, readers_count = 6000, 16_000, 3
    with gateway_process(redis_server.url) as (gateway, proc):
        stalled = await gateway.connect(mint("stalled"), max_queue=1)  # reads one frame, then stops
        await subscribe(stalled, "system:broadcast")
        readers = [await gateway.connect(mint(f"reader-{i}")) for i in range(readers_count)]
        for ws in readers:
            await subscribe(ws, "system:broadcast")
        progress = [0] * readers_count
        received: list[list[int]] = [[] for _ in readers]

        async def read(index: int) -> None:
            while progress[index] < total:
                for frame in await frames(readers[index], timeout=30):
                    if frame["type"] in ("join", "leave"):
                        continue  # presence (the example's system:broadcast has it)
                    assert frame["type"] == "message", frame  # no resync: nothing was dropped
                    received[index].append(frame["data"]["n"])
                    progress[index] += 1

        tasks = [asyncio.ensure_future(read(i)) for i in range(readers_count)]
        pad = "x" * size
        rss: list[tuple[int, int]] = []
        sent = 0
        started = time.monotonic()
        while sent < total:
            while sent - min(progress) > 40:  # noqa: ASYNC110 - readers keep up; the stalled one never does
                await asyncio.sleep(0.002)
            pipe = redis_admin.pipeline(transaction=False)
            for n in range(sent, sent + 20):
                pipe.publish("system:broadcast", json.dumps({"n": n, "pad": pad}))
            await asyncio.to_thread(pipe.execute)
            sent += 20
            if sent % 1000 == 0:
                rss.append((sent, rss_kib(proc.pid)))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        elapsed = time.monotonic() - started
        assert all(r == list(range(total)) for r in received)
        # Memory: the stalled socket holds at most its outbox (100 messages) plus the
        # transport's buffer; after the first ~10 MB (kernel buffers fill) RSS stays put.
        settled = [kib for n, kib in rss if n >= 2000]
        growth = max(settled) - min(settled)
        print(
            f"\n{total} x {size // 1000} KB to {readers_count} readers + 1 stalled in "
            f"{elapsed:.2f}s; server RSS (KiB) by messages sent: {rss}; growth after "
            f"2000 messages: {growth} KiB"
        )
        assert growth < 8 * 1024
        # The stalled client, reading at last, learns that it missed messages.
        got: list[dict[str, Any]] = []
        try:
            while True:
                got.extend(await frames(stalled, timeout=1))
        except asyncio.TimeoutError:
            pass
        kinds = {f["type"] for f in got}
        assert "resync" in kinds
        numbers = [f["data"]["n"] for f in got if f["type"] == "message"]
        assert numbers == sorted(numbers)
        assert len(numbers) < total
        await stalled.close()
        for ws in readers:
            await ws.close()
