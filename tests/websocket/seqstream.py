"""Helpers for the loss-free reconnect tests: a steady, bounded publisher of
sequence-numbered messages, and WebSocket readers that reconnect with ``recover`` from the
last position they saw (real ``websockets`` clients; the example gateway's protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway_redis import ChannelHistory, RedisUnavailable
from tests.websocket.wsutil import Gateway, mint

CHANNEL = "system:broadcast"  # history on (1,000 messages, 300 s) in examples.realtime


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait (polling) until ``condition()``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@dataclass
class SteadyPublisher:
    """Publishes ``{"seq": 1..count}`` at ``rate`` per second, each one retried until
    acknowledged (after an outage the schedule starts again from then: no burst of
    overdue messages). ``gate`` cleared pauses it between two messages (``paused`` is set
    while it waits)."""

    publish: Callable[[int], Awaitable[object]]
    count: int = 200
    rate: float = 100.0
    sent: int = 0  # acknowledged
    retries: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    paused: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, timeout: float = 60.0) -> None:
        self.gate.set()
        due = time.monotonic()
        deadline = due + timeout
        for seq in range(1, self.count + 1):
            if not self.gate.is_set():
                self.paused.set()
                await self.gate.wait()
                self.paused.clear()
            due = max(due + 1 / self.rate, time.monotonic())
            await asyncio.sleep(due - time.monotonic())
            while True:
                try:
                    await self.publish(seq)
                    break
                except (RedisUnavailable, RetryLater):
                    assert time.monotonic() < deadline, f"publishing seq {seq} never succeeded"
                    self.retries += 1
                    await asyncio.sleep(0.05)
            self.sent = seq


class RetryLater(Exception):
    """The HTTP publish route answered 503 (Redis unavailable): try again."""


def library_publisher(history: ChannelHistory, channel: str = CHANNEL) -> Callable[[int], Any]:
    """Publish through :class:`ChannelHistory`, with an idempotency key per sequence
    number, so a retry after a lost reply never publishes twice."""

    async def publish(seq: int) -> None:
        await history.publish(channel, {"seq": seq}, idempotency_key=f"seq-{seq}")

    return publish


def http_publisher(http: httpx.AsyncClient, channel: str = CHANNEL) -> Callable[[int], Any]:
    """Publish through the example gateway's ``POST /api/channels/{channel}/publish``, as
    a publisher in any language would (``http`` has the base URL and an admin token)."""

    async def publish(seq: int) -> None:
        response = await http.post(f"/api/channels/{channel}/publish", json={"seq": seq})
        if response.status_code == 503:
            raise RetryLater
        assert response.status_code == 200, response.text
        assert "offset" in response.json()

    return publish


@dataclass
class SeqReader:
    """One client of ``channel``: reads every frame into ``seqs``/``offsets``, remembers
    the last position it saw (the ``subscribed`` reply's before any message), and
    reconnects with ``recover`` from it. ``replies`` are its ``subscribed`` replies,
    ``others`` every frame that is neither a message nor a reply nor a ping."""

    user: str
    channel: str = CHANNEL
    seqs: list[int] = field(default_factory=list)
    offsets: list[tuple[str, int]] = field(default_factory=list)
    last: dict[str, Any] | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    unavailable: int = 0
    ws: ClientConnection | None = None
    task: asyncio.Task[None] | None = None

    async def connect(self, gateway: Gateway, timeout: float = 20.0) -> dict[str, Any]:
        """Connect and subscribe (with ``recover`` when a position is known); returns the
        ``subscribed`` reply once it came (messages read meanwhile are kept). An
        ``unavailable`` answer (the gateway's Redis client still failing fast after an
        outage) is retried, as the protocol asks (``unavailable`` counts them)."""
        self.ws = await gateway.connect(mint(self.user))
        self.task = asyncio.create_task(self._read(self.ws))
        deadline = time.monotonic() + timeout
        while True:
            frame: dict[str, Any] = {"type": "subscribe", "channels": [self.channel], "id": 1}
            if self.last is not None:
                frame["recover"] = {self.channel: self.last}
            counts = (len(self.replies), len(self.others))

            def answered(c: tuple[int, int] = counts) -> bool:
                return (len(self.replies), len(self.others)) != c or self.closed

            await self.ws.send(json.dumps(frame))
            await until(
                answered,
                f"the subscribed reply ({self.user})",
                max(0.0, deadline - time.monotonic()),
            )
            if len(self.replies) > counts[0]:
                return self.replies[-1]
            assert not self.closed, f"{self.user}: closed before the reply: {self.others}"
            if self.others[-1].get("code") != "unavailable":
                raise AssertionError(f"{self.user}: {self.others[-1]}")
            del self.others[-1]
            self.unavailable += 1
            await asyncio.sleep(0.05)

    @property
    def closed(self) -> bool:
        return self.task is None or self.task.done()

    async def drop(self) -> None:
        """Cut the connection (no close handshake), as a lost network would."""
        assert self.ws is not None
        assert self.task is not None
        self.ws.transport.abort()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                for f in frame["messages"] if frame["type"] == "batch" else [frame]:
                    self._take(f)
        except ConnectionClosed:
            pass

    def _take(self, f: dict[str, Any]) -> None:
        kind = f["type"]
        if kind == "message" and f.get("channel") == self.channel:
            self.seqs.append(f["data"]["seq"])
            self.offsets.append((f["epoch"], f["offset"]))
            self.last = {"epoch": f["epoch"], "offset": f["offset"]}
        elif kind == "subscribed":
            self.replies.append(f)
            if self.last is None or not f.get("recovered", {}).get(self.channel, True):
                # a fresh start: from where the channel was when subscribed
                self.last = dict(f["positions"][self.channel])
        elif kind not in ("ping", "join", "leave"):  # presence comes and goes: not checked
            self.others.append(f)

    def has(self, seq: int) -> bool:
        return bool(self.seqs) and self.seqs[-1] >= seq


def assert_exactly_once_in_order(reader: SeqReader, count: int) -> None:
    """Every sequence number 1..count once, in order, on consecutive offsets of one epoch."""
    dups = sorted({s for s in reader.seqs if reader.seqs.count(s) > 1})
    missing = sorted(set(range(1, count + 1)) - set(reader.seqs))
    assert reader.seqs == list(range(1, count + 1)), (reader.user, dups, missing[:20])
    epochs = {e for e, _ in reader.offsets}
    assert len(epochs) == 1, (reader.user, epochs)
    first = reader.offsets[0][1]
    assert [o for _, o in reader.offsets] == list(range(first, first + count)), reader.user
