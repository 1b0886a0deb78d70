"""Recovery on reconnect: how long a client that missed 1,000 messages waits for them.

The example gateway (``examples.realtime:create_app``, 1,000 messages of history on
``system:broadcast``) under uvicorn in its own process, on an embedded Redis; a
``websockets`` client in this process. Each round: 1,000 messages (about 100 bytes of
JSON each) are published through :class:`~gateway_redis.ChannelHistory` while the client
is away; it connects, then sends ``subscribe`` with ``recover`` from the last position it
saw, and the time is taken from sending that frame to having parsed the 1,000th message
(the ``subscribed`` reply says ``recovered: true``; every offset is checked). Reported:
p50, p99 and max over the rounds (goal: p99 under 100 ms). The client's own JSON parsing
is included: it is a lower bound for a browser, an upper bound for the server's share.
The client's collector is not: this process collects (``gc.collect``) after publishing,
before each timed reconnect, so none of its own generation-2 collections (30-45 ms after
the 1,000 publishes of a round) lands in a timing; the gateway's process is untouched.

Run: ``python -m benchmarks.bench_recovery [--rounds 60] [--missed 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
import uuid
from typing import Any

import jwt
import websockets

from benchmarks import _common as c
from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis

__all__ = ["main", "run"]

CHANNEL = "system:broadcast"
SECRET = "recovery-secret-" + "s" * 40
UVICORN_WS = ["--ws-max-size", "65536", "--ws-per-message-deflate", "false"]
BODY = {"text": "a typical notification body", "tags": ["a", "b"], "pad": "x" * 32}


def _token() -> str:
    now = int(time.time())
    claims = {
        "sub": "reader", "roles": ["user"], "iat": now, "exp": now + 3600,
        "jti": uuid.uuid4().hex, "iss": "https://gateway.example", "aud": "gateway-api",
    }  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def _messages(ws: Any, count: int) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The ``subscribed`` reply, the next ``count`` messages, the WebSocket frames read."""
    reply: dict[str, Any] | None = None
    got: list[dict[str, Any]] = []
    frames = 0
    while reply is None or len(got) < count:
        frames += 1
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        for f in frame["messages"] if frame["type"] == "batch" else [frame]:
            if f["type"] == "message":
                got.append(f)
            elif f["type"] in ("subscribed", "error"):
                reply = f
    return reply, got, frames


async def _publish(history: ChannelHistory, count: int) -> None:
    for start in range(0, count, 16):
        await asyncio.gather(
            *(
                history.publish(CHANNEL, {**BODY, "n": n})
                for n in range(start, min(count, start + 16))
            )
        )


async def run(rounds: int = 60, missed: int = 1000) -> dict[str, float]:
    """The figures (module docstring); bounded by ``rounds * missed`` publishes."""
    server = EmbeddedRedis()
    server.start()
    if server.pid is not None and c.can_pin():
        c.pin_pid(server.pid, c.LOAD_CPU)  # as in bench_fanout: the gateway has the other core
    env = {
        "REDIS_URL": server.url, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_COOKIE_SECURE": "0",
        "GATEWAY_WS_PING_INTERVAL": "0", "GATEWAY_WS_IDLE_TIMEOUT": "0",
    }  # fmt: skip
    times: list[float] = []
    counts: list[int] = []
    try:
        with c.serving("examples.realtime:create_app", env, extra_args=UVICORN_WS) as gateway:
            url = f"ws://127.0.0.1:{gateway.port}/ws"
            options: dict[str, Any] = {"subprotocols": ["bearer", _token()], "compression": None}
            async with RedisClient(RedisConfig(url=server.url, pool_size=16)) as client:
                history = ChannelHistory(client, size=1000, ttl=300)
                async with websockets.connect(url, **options) as ws:
                    subscribe = {"type": "subscribe", "channels": [CHANNEL], "id": 1}
                    await ws.send(json.dumps(subscribe))
                    reply, _, _ = await _messages(ws, 0)
                last = reply["positions"][CHANNEL]
                for _ in range(rounds + 2):  # the first two warm up
                    await _publish(history, missed)
                    gc.collect()  # this process's own collections stay out of the timings
                    async with websockets.connect(url, **options) as ws:
                        frame = {**subscribe, "recover": {CHANNEL: last}}
                        started = time.perf_counter()
                        await ws.send(json.dumps(frame))
                        reply, got, frames = await _messages(ws, missed)
                        times.append(time.perf_counter() - started)
                        counts.append(frames)
                    assert reply.get("recovered") == {CHANNEL: True}, reply
                    offsets = [f["offset"] for f in got]
                    assert offsets == list(range(last["offset"] + 1, last["offset"] + missed + 1))
                    last = {"epoch": got[-1]["epoch"], "offset": got[-1]["offset"]}
    finally:
        server.cleanup()
    times = times[2:]
    return {
        "rounds": float(len(times)),
        "missed": float(missed),
        "p50_ms": c.percentile(times, 50) * 1000,
        "p99_ms": c.percentile(times, 99) * 1000,
        "max_ms": max(times) * 1000,
        "frames_per_recovery": statistics.mean(counts[2:]),
    }


def goals(figures: dict[str, float]) -> list[tuple[str, bool, str]]:
    """The goal row: p99 of the recovery of 1,000 missed messages under 100 ms."""
    p99 = figures["p99_ms"]
    return [
        (
            f"recovery of {figures['missed']:,.0f} missed messages on reconnect: p99 < 100 ms",
            p99 < 100,
            f"p99 {p99:.1f} ms (p50 {figures['p50_ms']:.1f}, max {figures['max_ms']:.1f}; "
            f"{figures['rounds']:.0f} reconnects)",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--missed", type=int, default=1000)
    args = parser.parse_args()
    figures = asyncio.run(run(args.rounds, args.missed))
    print(json.dumps(figures, indent=1))
    for name, ok, detail in goals(figures):
        print(f"{name}: {'met' if ok else 'NOT met'} ({detail})")


if __name__ == "__main__":
    main()
