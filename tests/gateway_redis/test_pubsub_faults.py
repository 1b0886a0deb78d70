"""Pub/sub under faults: no silent gap for a lagging subscriber, every call under one deadline.

Gaps: a publisher sends numbered messages while a consumer lags (pauses 150 ms every
200 ms) and the subscriber connection is lost (CLIENT KILL TYPE pubsub, a server restart).
Every jump in the numbers must be on a message with ``gap_before``; a message published
before the loss and taken after it must not carry it.

Deadlines: with the server frozen (SIGSTOP) or black-holed (a proxy that stops relaying),
every public pub/sub call answers within ``operation_timeout`` plus a small slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.pubsub import Message, Subscription
from tests.pubsubutil import until

OPERATION_TIMEOUT = 0.5
SLACK = 0.35  # proves the deadline without being flaky on a loaded machine


# -- a lagging consumer sees every gap --------------------------------------------------------


class Numbered:
    """A publisher of numbered messages on ``channel``, on its own connection."""

    def __init__(self, url: str, channel: str) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._channel = channel
        self.last = 0  # the last number Redis accepted
        self._attempted = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        # A flag, not cancel(): a cancelled publish may be swallowed by the driver.
        assert self._task is not None
        self._stopping = True
        await asyncio.wait_for(self._task, 5)
        await self._redis.aclose()

    async def _run(self) -> None:
        for _ in range(20_000):  # bounded: about 20 s at most
            if self._stopping:
                return
            self._attempted += 1
            try:
                await self._redis.publish(self._channel, str(self._attempted))
                self.last = self._attempted
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                await asyncio.sleep(0.01)  # the server is restarting: those numbers are lost
            await asyncio.sleep(0.001)


def silent_gaps(got: list[tuple[int, bool]]) -> tuple[int, int, int]:
    """(jumps, jumps without gap_before, messages missing in those) over (number, flag)."""
    jumps = silent = missing = 0
    previous = 0
    for number, gap in got:
        if number != previous + 1:
            jumps += 1
            if not gap:
                silent += 1
                missing += number - previous - 1
        previous = number
    return jumps, silent, missing


@pytest.mark.parametrize("fault", ["client_kill", "restart"])
async def test_lagging_subscriber_sees_every_gap_on_the_first_message_after_the_loss(
    fault_server: EmbeddedRedis, fault: str
) -> None:
    admin = redis.Redis.from_url(fault_server.url, socket_timeout=2)
    config = RedisConfig(url=fault_server.url, operation_timeout=1.5)
    async with RedisClient(config) as client:
        sub = await client.subscribe("numbers", buffer_size=10_000)
        callback: list[tuple[int, bool]] = []
        callback_sub = await client.pubsub.subscribe(
            "numbers", on_message=lambda m: callback.append((int(m.data), m.gap_before))
        )
        taken: list[tuple[int, bool, int]] = []  # number, gap_before, losses before taking
        losses = 0
        boundaries: list[int] = []  # the last number published before each loss
        pausing = asyncio.Event()
        stop = asyncio.Event()
        lost: list[float] = []
        client.pubsub.add_disconnect_listener(lambda: lost.append(time.monotonic()))

        async def consume() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                window = time.monotonic() + 0.05
                while time.monotonic() < window:
                    with contextlib.suppress(asyncio.TimeoutError):
                        message: Message = await asyncio.wait_for(anext(sub), 0.05)
                        taken.append((int(message.data), message.gap_before, losses))
                pausing.set()
                await asyncio.sleep(0.15)  # lagging: the buffer fills meanwhile
                pausing.clear()

        publisher = Numbered(fault_server.url, "numbers")
        publisher.start()
        consumer = asyncio.get_running_loop().create_task(consume())
        try:
            for _ in range(3):
                mark = publisher.last + 50
                await until(lambda m=mark: publisher.last > m, 5, "publishing")
                for _attempt in range(20):
                    await asyncio.wait_for(pausing.wait(), 3)
                    await asyncio.sleep(0.03)  # mid-pause: older messages wait in the buffer
                    if sub.pending > 0:
                        break
                    await asyncio.sleep(0.15)
                assert sub.pending > 0
                boundaries.append(publisher.last)
                losses += 1
                if fault == "client_kill":
                    assert admin.client_kill_filter(_type="pubsub") == 1
                else:
                    await asyncio.to_thread(fault_server.restart)
                await until(lambda n=losses: len(lost) == n and client.pubsub.connected, 5, "back")
                await asyncio.sleep(0.3)  # numbers keep flowing after the reconnect
        finally:
            await publisher.stop()
        last = publisher.last
        await until(lambda: bool(taken) and taken[-1][0] >= last, 10, "consumer caught up")
        stop.set()
        await consumer
        await sub.close()
        await callback_sub.close()
    admin.close()

    jumps, silent, missing = silent_gaps([(n, gap) for n, gap, _ in taken])
    print(f"\n{fault}: {len(taken)} taken, {jumps} jumps, {silent} silent ({missing} missing)")
    assert silent == 0, f"{silent} gaps went unannounced ({missing} messages missing)"
    # A message published before a loss and taken after it is no gap.
    for number, gap, seen_losses in taken:
        if gap and seen_losses:
            assert number > boundaries[seen_losses - 1], f"{number} flagged, published before"
    assert silent_gaps(callback)[1] == 0, "the callback path must flag every gap too"
    assert sub.gaps >= 3
    assert sub.dropped == 0


def buffered(size: int) -> Subscription:
    sub = Subscription(
        size, None, channels={b"c": "c"}, patterns={}, release=lambda s: None, on_drop=lambda: None
    )
    sub.activate()
    return sub


def numbered(n: int) -> Message:
    return Message("c", str(n), n)


def test_the_gap_of_a_lost_connection_is_on_the_first_message_that_arrives_after_it() -> None:
    sub = buffered(10)
    for n in (1, 2, 3):
        sub.deliver(numbered(n))
    sub.connection_lost()
    sub.connection_lost()  # a second report of the same loss is the same gap
    for n in (7, 8):
        sub.deliver(numbered(n))
    assert [(m.data, m.gap_before) for m in sub.drain()] == [
        (1, False), (2, False), (3, False), (7, True), (8, False)
    ]  # fmt: skip
    assert sub.gaps == 1


def test_an_overflow_over_a_flagged_message_keeps_one_gap_on_the_oldest_kept() -> None:
    sub = buffered(2)
    sub.deliver(numbered(1))
    sub.connection_lost()
    sub.deliver(numbered(5))  # flagged: 2-4 were lost with the connection
    sub.deliver(numbered(6))  # drops 1
    sub.deliver(numbered(7))  # drops 5, the flagged one: the gap moves to 6
    assert [(m.data, m.gap_before) for m in sub.drain()] == [(6, True), (7, False)]
    assert sub.dropped == 2


def test_take_gap_reports_a_lost_connection_and_clears_the_flags() -> None:
    sub = buffered(10)
    sub.deliver(numbered(1))
    sub.connection_lost()
    assert sub.take_gap()  # nothing arrived yet: the consumer resyncs at once
    sub.deliver(numbered(5))
    assert not sub.take_gap()
    sub.connection_lost()
    sub.deliver(numbered(9))  # flagged in the buffer, then the consumer resyncs at once
    assert sub.take_gap()
    assert [m.gap_before for m in sub.drain()] == [False, False, False]


def test_a_callback_subscription_gets_the_gap_on_the_next_message() -> None:
    got: list[tuple[int, bool]] = []
    sub = Subscription(
        10,
        lambda m: got.append((m.data, m.gap_before)),
        channels={b"c": "c"},
        patterns={},
        release=lambda s: None,
        on_drop=lambda: None,
    )
    sub.activate()
    sub.deliver(numbered(1))
    sub.connection_lost()
    sub.deliver(numbered(4))
    sub.deliver(numbered(5))
    assert got == [(1, False), (4, True), (5, False)]


# -- every public call answers within operation_timeout ---------------------------------------


class BlackHole:
    """A TCP relay to ``upstream`` that can stop relaying: connections stay open, new ones
    are accepted, and nothing ever comes back (a black-holed server)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self.holed = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            pass  # a relay ends quietly, cancelled or not
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.holed:  # holed: the bytes vanish
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def black_hole(fault_server: EmbeddedRedis) -> AsyncIterator[BlackHole]:
    hole = BlackHole(("127.0.0.1", fault_server.port))
    await hole.start()
    yield hole
    await hole.aclose()


async def timed(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await call
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


SUBSCRIBES = ("subscribe", "psubscribe")


@pytest.mark.parametrize("fault", ["freeze", "black_hole"])
async def test_every_pubsub_call_answers_within_operation_timeout(
    fault_server: EmbeddedRedis, black_hole: BlackHole, fault: str
) -> None:
    url = fault_server.url if fault == "freeze" else f"redis://127.0.0.1:{black_hole.port}"
    config = RedisConfig(
        url=url,
        operation_timeout=OPERATION_TIMEOUT,
        min_idle_conns=1,
        sharded_channels=("sh:*",),
    )
    async with RedisClient(config) as client, RedisClient(config) as cold:
        hub = client.pubsub
        warm = [await hub.subscribe(name) for name in ("warm", "other", "sh:warm")]
        await until(lambda: hub.connected, 2, "hub connected")
        if fault == "freeze":
            fault_server.freeze()
        else:
            black_hole.holed = True
        try:
            calls: dict[str, Callable[[str], Awaitable[Any]]] = {
                "hub.subscribe": lambda n: hub.subscribe(f"new{n}"),
                "hub.subscribe(on_message)": lambda n: hub.subscribe(f"cb{n}", on_message=print),
                "hub.subscribe(sharded)": lambda n: hub.subscribe(f"sh:new{n}"),
                "hub.psubscribe": lambda n: hub.psubscribe(f"new{n}:*"),
                "hub.publish": lambda n: hub.publish("warm", 1),
                "hub.publish(sharded)": lambda n: hub.publish("sh:warm", 1),
                "hub.unsubscribe": lambda n: hub.unsubscribe(f"warm{n}"),
                "client.subscribe": lambda n: client.subscribe(f"c{n}"),
                "client.psubscribe": lambda n: client.psubscribe(f"c{n}:*"),
                "client.publish": lambda n: client.publish("other", 1),
                "client.unsubscribe": lambda n: client.unsubscribe(f"other{n}"),
                "cold hub.subscribe": lambda n: cold.pubsub.subscribe(f"cold{n}"),
                "cold hub.publish": lambda n: cold.pubsub.publish("cold", 1),
            }
            # Round 1, all at once at the start of the fault: none benefits from another's
            # failure. Round 2, one after the other while the fault lasts (the hub notices
            # it meanwhile): whatever the client has learnt, no call takes longer.
            first = await asyncio.gather(*(timed(call("")) for call in calls.values()))
            later = [await timed(call("2")) for call in calls.values()]
            for sub in warm:
                await sub.close()
        finally:
            fault_server.thaw()
            black_hole.holed = False
    for round_, results in (("first", first), ("later", later)):
        report = {name: round(t, 3) for name, (t, _) in zip(calls, results, strict=True)}
        print(f"\n{fault}, {round_}: {report}")
        for name, (seconds, error) in zip(calls, results, strict=True):
            assert seconds < OPERATION_TIMEOUT + SLACK, f"{name} took {seconds:.2f}s"
            if "unsubscribe" in name:  # Redis is told without waiting for its reply
                assert error is None, f"{name} raised {error!r}"
            else:
                assert isinstance(error, RedisUnavailable), f"{name}: {error!r}"
    for name, (_, error) in zip(calls, first, strict=True):
        if name.split(".")[-1].split("(")[0] in SUBSCRIBES:  # confirmation never came
            assert isinstance(error, RedisUnavailable), name
            assert error.reason == "timeout", name
