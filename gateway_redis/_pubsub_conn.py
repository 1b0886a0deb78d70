"""The wire side of pub/sub: envelope, subscription bookkeeping, the supervised connection.

Private to :mod:`gateway_redis.pubsub`.

Why a raw :class:`redis.asyncio.connection.Connection` and not redis-py's ``PubSub``:
``PubSub`` reconnects and resubscribes silently (redis-py 7.2+), so messages lost meanwhile
go unnoticed, and it keeps channel bookkeeping we would have to mirror. A raw RESP2
connection gives every drop as an exception and every reply as a plain array:
``[b"message", channel, data]``, ``[b"pmessage", pattern, channel, data]`` and one
``[b"subscribe" | b"unsubscribe" | ..., name, count]`` per name, in command order. That
order is what :class:`Wire` relies on to match confirmations to waiters.

:class:`Supervisor` is the connection-keeping machinery (sessions, reconnects, health
votes, liveness schedule); :class:`Listener` is the classic connection built on it, and
:mod:`gateway_redis._pubsub_shards` builds the per-node sharded connections on it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from redis import exceptions as rexc

from gateway_redis import _driver
from gateway_redis.support import cancel_and_wait, describe_error, log_fields

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from gateway_redis.client import RedisClient

T = TypeVar("T")
_log = logging.getLogger("gateway_redis.pubsub")

RESERVED: Final = "__gateway_redis__:"
"""Channel names starting with this belong to the library (the liveness channel)."""
MAX_NAME_BYTES: Final = 1024
"""Longest channel name or pattern accepted, in UTF-8 bytes."""
_BATCH: Final = 512  # names per SUBSCRIBE command, to keep single commands small
# Messages the reader handles before letting other tasks run. Below the default buffer
# size (100): consumers woken by one burst get to run before the burst can overflow them.
_YIELD_EVERY: Final = 64
_HEAD: Final = b'{"_gw":'
_MID: Final = b',"data":'
_DECODER: Final = json.JSONDecoder()
_GLOB: Final = re.compile(r"([\\*?\[\]])")
_IDLE: Final = "idle"  # a session ended because its wire wanted no connection
_LINGER: Final = 5.0  # seconds an unwanted connection stays open (churn of last subscribers)


class ProtocolError(Exception):
    """The subscriber connection sent something we did not expect: drop and reconnect."""


def open_subscriber_connection(client: RedisClient) -> AbstractConnection:
    """A new, unconnected connection outside the pool for SUBSCRIBE.

    RESP2 (replies are plain arrays), no read timeout (an idle subscriber must not be cut
    off; liveness is checked separately), ``dial_timeout`` to connect, and no retries
    (redis-py must never reconnect behind our back). Address, TLS, credentials and the
    topology (Sentinel: the current primary) come from the client's backend.
    """
    return client.backend.lone_connection(
        socket_timeout=None,
        socket_connect_timeout=client.config.dial_timeout,
        retry=None,
        health_check_interval=0,
        client_name="gateway-redis-pubsub",
        protocol=2,
    )


def check_names(names: tuple[object, ...], what: str) -> list[str]:
    """Validate channel names or patterns; returns them without duplicates, in order.

    Raises :class:`TypeError` for non-strings and :class:`ValueError` for none at all,
    empty names, names over :data:`MAX_NAME_BYTES` UTF-8 bytes, names that cannot be
    encoded, and names in the library's reserved namespace.
    """
    if not names:
        raise ValueError(f"give at least one {what}")
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must be str, got {type(name).__name__}")
        if not name:
            raise ValueError(f"{what} must not be empty")
        try:
            size = len(name.encode())
        except UnicodeEncodeError:
            raise ValueError(f"{what} {name!r} is not valid text") from None
        if size > MAX_NAME_BYTES:
            raise ValueError(f"{what} is {size} bytes long; the limit is {MAX_NAME_BYTES}")
        if name.startswith(RESERVED):
            raise ValueError(f"{what} names starting with {RESERVED!r} are reserved")
        checked.append(name)
    return list(dict.fromkeys(checked))


def encode_payload(text: bytes, context: Mapping[str, str]) -> bytes:
    """The bytes to PUBLISH for the user's JSON ``text`` (UTF-8) and a trace ``context``.

    Without trace context the user's JSON goes out as is (redis-cli and Go services read
    it). With one, it is wrapped as ``{"_gw":{...context...},"data":<text>}`` by
    concatenation, so receivers can slice ``text`` back out byte for byte. JSON that itself
    starts like an envelope is always wrapped (with ``"_gw":{}``) so it is never mistaken
    for one.
    """
    if not context and not text.startswith(_HEAD):
        return text
    header = json.dumps(dict(context), separators=(",", ":")).encode()
    return _HEAD + header + _MID + text + b"}"


def decode_payload(raw: bytes) -> tuple[str, Any, Mapping[str, str] | None]:
    """``(payload, data, trace_context)`` for a received message body.

    ``payload`` is the publisher's text (the inner JSON for our envelope), decoded as UTF-8
    with replacement characters for invalid bytes; ``data`` is the decoded JSON or None when
    the payload is not JSON; ``trace_context`` is the envelope's propagation headers or None.
    """
    if raw.startswith(_HEAD) and raw.endswith(b"}"):
        unwrapped = _unwrap(raw.decode("utf-8", "replace"))
        if unwrapped is not None:
            return unwrapped
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than json can go
        data = None
    return text, data, None


def _unwrap(text: str) -> tuple[str, Any, Mapping[str, str] | None] | None:
    # Exactly '{"_gw":' <object of strings> ',"data":' <one JSON value> '}', nothing else.
    head = len(_HEAD)
    try:
        context, end = _DECODER.raw_decode(text, head)
    except (ValueError, RecursionError):
        return None
    if not isinstance(context, dict) or not text.startswith(_MID.decode(), end):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        return None
    inner = text[end + len(_MID) : -1]
    try:
        data = json.loads(inner)
    except (ValueError, RecursionError):
        return None
    return inner, data, (MappingProxyType(context) if context else None)


def backoff(attempt: int, *, base: float = 0.05, cap: float = 1.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential, jittered, capped."""
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 16))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Entry(Generic[T]):
    """One Redis subscription (a channel or a pattern), shared by all its subscribers.

    ``confirmed`` is set once Redis acknowledged it on the current connection (and when the
    entry is dropped, so no waiter is left behind); it is cleared on every reconnect.
    """

    __slots__ = ("confirmed", "name", "subs", "wire")

    def __init__(self, name: str, wire: bytes) -> None:
        self.name = name
        self.wire = wire
        self.subs: set[T] = set()
        self.confirmed = asyncio.Event()


class Table(Generic[T]):
    """Wanted subscriptions of one kind, keyed by their name on the wire (prefix included).

    ``unsent`` holds entries not yet subscribed on the current connection; ``gone`` holds
    names subscribed on it that nobody wants any more.
    """

    def __init__(self, prefix: bytes, command: str, uncommand: str) -> None:
        self.prefix = prefix
        self.command = command
        self.uncommand = uncommand
        self.entries: dict[bytes, Entry[T]] = {}
        self.unsent: dict[bytes, Entry[T]] = {}
        self.gone: dict[bytes, None] = {}

    def key(self, name: str) -> bytes:
        """The wire name of ``name``."""
        return self.prefix + name.encode()

    def acquire(self, name: str, owner: T) -> Entry[T]:
        """Add ``owner`` to the entry for ``name``, creating it if needed."""
        key = self.key(name)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(name, key)
            self.unsent[key] = entry
        entry.subs.add(owner)
        return entry

    def release(self, key: bytes, owner: T) -> None:
        """Remove ``owner``; the last one out drops the entry (and queues an unsubscribe)."""
        entry = self.entries.get(key)
        if entry is None or owner not in entry.subs:
            return
        entry.subs.discard(owner)
        if entry.subs:
            return
        del self.entries[key]
        if self.unsent.pop(key, None) is None:
            self.gone[key] = None
        entry.confirmed.set()

    def reset(self) -> None:
        """A new connection: everything wanted is unsent and unconfirmed."""
        self.unsent = dict(self.entries)
        self.gone.clear()
        for entry in self.entries.values():
            entry.confirmed.clear()

    def close(self) -> None:
        """Forget everything, waking any waiter."""
        for entry in self.entries.values():
            entry.confirmed.set()
        self.entries.clear()
        self.unsent.clear()
        self.gone.clear()


class Wire(Generic[T]):
    """What the subscriber connection should be subscribed to, and what it has been told.

    :meth:`pending_commands` turns outstanding changes into commands and records, per name,
    the confirmation Redis will send back; :meth:`confirm` matches each confirmation to
    the entry that waits for it. The private ``liveness`` channel is subscribed last on a new
    connection, so its confirmation means every resubscription before it is confirmed too.
    """

    def __init__(self, channel_prefix: str, liveness_name: str) -> None:
        self.prefix = channel_prefix.encode()
        self.channels: Table[T] = Table(self.prefix, "SUBSCRIBE", "UNSUBSCRIBE")
        escaped = _GLOB.sub(r"\\\1", channel_prefix).encode()
        self.patterns: Table[T] = Table(escaped, "PSUBSCRIBE", "PUNSUBSCRIBE")
        self.liveness: Entry[T] = Entry(liveness_name, self.prefix + liveness_name.encode())
        self._liveness_sent = False
        self._expect: deque[tuple[bytes, bytes, Entry[T] | None]] = deque()

    @property
    def wanted(self) -> bool:
        """Always: the classic connection also carries the hub's liveness channel."""
        return True

    def summary(self) -> str:
        """What is subscribed, for logs."""
        return f"{len(self.channels.entries)} channels and {len(self.patterns.entries)} patterns"

    def reset(self) -> None:
        """Forget the previous connection's state."""
        self.channels.reset()
        self.patterns.reset()
        self.liveness.confirmed.clear()
        self._liveness_sent = False
        self._expect.clear()

    def close(self) -> None:
        """Drop everything and wake every waiter."""
        self.channels.close()
        self.patterns.close()
        self.liveness.confirmed.set()
        self._expect.clear()

    def pending_commands(self) -> list[tuple[str | bytes, ...]]:
        """Commands that bring the connection up to date (unsubscribes first)."""
        commands: list[tuple[str | bytes, ...]] = []
        for table in (self.channels, self.patterns):
            self._add(commands, table.uncommand, [(key, None) for key in table.gone])
            table.gone.clear()
        for table in (self.channels, self.patterns):
            self._add(commands, table.command, list(table.unsent.items()))
            table.unsent.clear()
        if not self._liveness_sent:
            self._liveness_sent = True
            self._add(commands, "SUBSCRIBE", [(self.liveness.wire, self.liveness)])
        return commands

    def _add(
        self,
        commands: list[tuple[str | bytes, ...]],
        command: str,
        items: list[tuple[bytes, Entry[T] | None]],
    ) -> None:
        reply = command.lower().encode()
        for start in range(0, len(items), _BATCH):
            chunk = items[start : start + _BATCH]
            commands.append((command, *(key for key, _ in chunk)))
            self._expect.extend((reply, key, entry) for key, entry in chunk)

    def confirm(self, kind: bytes, name: bytes) -> None:
        """Match a ``[kind, name, count]`` reply; raises :class:`ProtocolError` if unexpected."""
        if not self._expect:
            raise ProtocolError(f"unexpected {kind!r} reply on the subscriber connection")
        want_kind, want_name, entry = self._expect.popleft()
        if (want_kind, want_name) != (kind, name):
            raise ProtocolError(f"expected a {want_kind!r} reply, got {kind!r}")
        if entry is not None:
            entry.confirmed.set()


Deliver = Callable[[set[T], str, str | None, bytes], None]
"""``deliver(subscribers, channel, pattern, raw_payload)``: hand a message to subscribers."""


class Wiring(Protocol):
    """What a :class:`Supervisor` needs from the subscriptions it serves."""

    @property
    def liveness(self) -> Entry[Any]:
        """Confirmed once everything sent on a new connection is confirmed."""

    @property
    def wanted(self) -> bool:
        """Whether a connection is needed at all."""

    def reset(self) -> None:
        """The connection is new (or gone): nothing is subscribed or confirmed on it."""

    def pending_commands(self) -> list[tuple[str | bytes, ...]]:
        """Commands that bring the connection up to date."""

    def summary(self) -> str:
        """What is subscribed, for logs."""


class Supervisor(Generic[T]):
    """Owns one subscriber connection: one supervisor task, one *session* per connection.

    A session connects (bounded by ``dial_timeout + read_timeout``), subscribes everything
    in ``wire`` and runs three tasks until the first one ends: the reader (replies and
    messages), the writer (subscription changes, woken by :meth:`kick`) and the watchdog
    (waits for the resubscription to be confirmed, then checks liveness). However a session
    ends, nothing counts as subscribed any more (``wire.reset()``); subscribers are told
    (``on_lost()``) and the listener reconnects: at once after a session that lived, else
    with jittered exponential backoff capped at 1 s. A wire that wants no connection (a
    shard connection whose channels all left) ends its session after a short linger and
    waits, quietly, until it is wanted again.

    Health: an unresponsive server (liveness failed) or a failed connection attempt votes
    the client down (:meth:`_vote_down`: ``hold_down(source)``) at once. A plain drop
    (CLIENT KILL, output buffer limit) gets a grace period of one liveness interval first:
    it is usually repaired in milliseconds, and Redis itself is fine. Once resubscribed:
    the vote is withdrawn (``release_down``, ``check_now``) and, if it was a reconnect,
    ``on_reconnect()`` runs. Retry waits end early on :meth:`wake` (Sentinel's
    ``+switch-master``).

    Subclasses provide the connection (:meth:`_open_connection`), the reader
    (:meth:`_read`) and the liveness check (:meth:`_check_liveness`).
    """

    _source = "pubsub"  # the health monitor's name for this connection's vote
    _task_name = "gateway-redis-pubsub"

    def __init__(
        self,
        client: RedisClient,
        wire: Wiring,
        *,
        deliver: Deliver[T],
        on_lost: Callable[[], None],
        on_reconnect: Callable[[], None],
        on_failed: Callable[[], None],
        liveness_interval: float,
        liveness_timeout: float,
    ) -> None:
        self._client = client
        self._wiring = wire
        self._deliver = deliver
        self._on_lost = on_lost
        self._on_reconnect = on_reconnect
        self._on_failed = on_failed
        self._interval = liveness_interval
        self._timeout = liveness_timeout
        self._setup_timeout = client.config.dial_timeout + client.config.read_timeout
        self._dirty = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self.live = False
        """True while connected and every subscription is confirmed."""
        self.failing = False
        """True after a connection attempt failed, until one succeeds."""
        self.failed = False
        """True once the supervisor died of a bug; the listener is then unusable."""
        self.reconnects = 0
        """Successful resubscriptions after a lost connection."""
        self._ever_live = self._held = False
        self._live_since = self._lost_at = self._last_rx = 0.0

    @property
    def started(self) -> bool:
        """True once :meth:`start` ran."""
        return self._task is not None

    def start(self) -> None:
        """Start the supervisor task (idempotent; needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=self._task_name
            )

    def kick(self) -> None:
        """Subscriptions changed: let the writer bring the connection up to date."""
        self._dirty.set()

    def wake(self) -> None:
        """The server may be reachable now (Sentinel switched the primary): cut short the
        wait before the next connection attempt."""
        self._wake.set()

    async def aclose(self) -> None:
        """Cancel and await the supervisor (and with it every session task); close sockets."""
        task, self._task = self._task, None
        if self._grace is not None:
            self._grace.cancel()
        if task is not None:
            await cancel_and_wait(task)
        self.live = False
        if self._held:  # a closed listener has no say in the client's health
            self._held = False
            self._vote_up(answered=False)

    # -- for subclasses -------------------------------------------------------------------

    def _open_connection(self) -> AbstractConnection:
        raise NotImplementedError

    async def _read(self, conn: AbstractConnection) -> str:
        raise NotImplementedError

    async def _check_liveness(self) -> str | None:
        """Check that the connection still serves us; a problem or None."""
        raise NotImplementedError

    def _session_ended(self, was_live: bool) -> None:
        """Called after every session, before the wire is reset."""

    # -- the supervisor -------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        wire = self._wiring
        try:
            while True:
                if not wire.wanted:
                    self._go_idle()
                    while not wire.wanted:
                        await self._dirty.wait()
                        self._dirty.clear()
                    attempt = 0
                reason, unresponsive = await self._session(self._open_connection())
                was_live, self.live = self.live, False
                self._session_ended(was_live)
                # Nothing is subscribed any more: a subscriber arriving from now on waits
                # for the next connection's confirmation.
                wire.reset()
                if not wire.wanted:
                    continue
                if was_live:
                    self._lost_at = time.monotonic()
                    self._on_lost()
                    _log.warning(
                        "%s connection lost (%s); resubscribing",
                        self._source,
                        reason,
                        extra={"component": "pubsub", "event": "pubsub_lost", "reason": reason},
                    )
                    if unresponsive:
                        self._hold(reason)
                    else:
                        self._grace = loop.call_later(self._interval, self._hold, reason)
                    if self._lost_at - self._live_since >= self._interval:  # not flapping
                        attempt = 0
                        continue
                else:
                    self._hold(reason)
                    if not self.failing:
                        _log.warning(
                            "%s cannot connect (%s); retrying",
                            self._source,
                            reason,
                            extra={
                                "component": "pubsub",
                                "event": "pubsub_connect_failed",
                                "reason": reason,
                            },
                        )
                        self.failing = True
                attempt += 1
                await self._pause(backoff(attempt))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not an outage: never leave subscribers deaf and waiting
            _log.exception(
                "%s listener failed; ending every subscription",
                self._source,
                extra=log_fields("pubsub", "pubsub_listener_failed"),
            )
            self.failed, self.live = True, False
            self._hold("pubsub listener failed")
            self._on_failed()

    async def _pause(self, seconds: float) -> None:
        if not self._wake.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                async with _driver.deadline(seconds):
                    await self._wake.wait()
        self._wake.clear()

    def _hold(self, reason: str) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self._held = True
        self._vote_down(reason)

    def _go_idle(self) -> None:
        # Nothing to serve: whatever this connection reported no longer matters.
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.failing = False
        if self._held:
            self._held = False
            self._vote_up(answered=False)

    def _vote_down(self, reason: str) -> None:
        """Tell the client's health this connection's server is unusable."""
        self._client.monitor.hold_down(self._source, f"{self._source}: {reason}")

    def _vote_up(self, *, answered: bool) -> None:
        """Withdraw :meth:`_vote_down`: the server answered, or its opinion no longer
        matters (idle, closed)."""
        self._client.monitor.release_down(self._source)
        self._client.monitor.check_now()

    async def _session(self, conn: AbstractConnection) -> tuple[str, bool]:
        """Connect, resubscribe, serve until the connection fails.

        Returns why it ended, and whether Redis stopped answering (the watchdog ended it).
        """
        try:
            try:
                async with _driver.deadline(self._setup_timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
            except Exception as exc:
                return f"connect failed: {describe_error(exc)}", True
            self._wiring.reset()
            self._last_rx = time.monotonic()
            self._dirty.set()
            loop = asyncio.get_running_loop()
            tasks = [
                loop.create_task(self._read(conn), name=f"{self._task_name}-reader"),
                loop.create_task(self._write(conn), name=f"{self._task_name}-writer"),
                loop.create_task(self._watch(), name=f"{self._task_name}-liveness"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(*tasks)
            ended = done.pop()
            error = ended.exception()
            reason = describe_error(error) if error is not None else ended.result()
            return reason, ended is tasks[2] and reason != _IDLE
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _write(self, conn: AbstractConnection) -> str:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            commands = self._wiring.pending_commands()
            if not commands:
                continue
            if not conn.is_connected:  # send_* would reconnect silently
                raise rexc.ConnectionError("subscriber connection closed")
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _watch(self) -> str:
        wire = self._wiring
        try:
            async with _driver.deadline(self._setup_timeout):
                await wire.liveness.confirmed.wait()
        except asyncio.TimeoutError:
            return f"subscriptions not confirmed within {self._setup_timeout}s"
        self._became_live()
        unwanted_since: float | None = None
        while True:
            await asyncio.sleep(self._interval / 2)
            now = time.monotonic()
            if wire.wanted:
                unwanted_since = None
            elif unwanted_since is None:
                unwanted_since = now
            elif now - unwanted_since >= _LINGER:
                return _IDLE
            if now - self._last_rx >= self._interval:
                problem = await self._check_liveness()
                if problem is not None:
                    return problem

    def _became_live(self) -> None:
        self.live, self.failing = True, False
        self._wake.clear()  # a hint older than this connection is stale
        self._live_since = time.monotonic()
        reconnected, self._ever_live = self._ever_live, True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._held:
            self._held = False
            self._vote_up(answered=True)
        if reconnected:
            self.reconnects += 1
            _log.info(
                "%s resubscribed %s after %.2fs",
                self._source,
                self._wiring.summary(),
                self._live_since - self._lost_at,
                extra={
                    "component": "pubsub",
                    "event": "pubsub_resubscribed",
                    "reconnects": self.reconnects,
                },
            )
            self._on_reconnect()


class Listener(Supervisor[T]):
    """The classic subscriber connection: SUBSCRIBE/PSUBSCRIBE on one connection.

    Liveness: after ``liveness_interval`` seconds of silence a token is published (over a
    private unpooled connection) on the private liveness channel this connection is
    subscribed to; not seen within ``liveness_timeout`` means the connection is dead.
    """

    def __init__(
        self,
        client: RedisClient,
        wire: Wire[T],
        *,
        deliver: Deliver[T],
        on_lost: Callable[[], None],
        on_reconnect: Callable[[], None],
        on_failed: Callable[[], None],
        liveness_interval: float,
        liveness_timeout: float,
    ) -> None:
        super().__init__(
            client,
            wire,
            deliver=deliver,
            on_lost=on_lost,
            on_reconnect=on_reconnect,
            on_failed=on_failed,
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
        )
        self._wire = wire
        self._probe: AbstractConnection | None = None
        self._token: tuple[bytes, asyncio.Future[None]] | None = None
        self._token_seq = 0

    async def aclose(self) -> None:
        await super().aclose()
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                await probe.disconnect(nowait=True)

    def _open_connection(self) -> AbstractConnection:
        return open_subscriber_connection(self._client)

    def _session_ended(self, was_live: bool) -> None:
        self._token = None

    async def _read(self, conn: AbstractConnection) -> str:
        wire, deliver, prefix = self._wire, self._deliver, len(self._wire.prefix)
        liveness = wire.liveness.wire
        count = 0
        while True:
            reply = await conn.read_response()
            self._last_rx = time.monotonic()
            if not isinstance(reply, list) or len(reply) < 3:
                raise ProtocolError(f"unexpected reply {type(reply).__name__}")
            kind = reply[0]
            if kind == b"message":
                if reply[1] == liveness:
                    token = self._token
                    if token is not None and reply[2] == token[0] and not token[1].done():
                        token[1].set_result(None)
                    continue
                entry = wire.channels.entries.get(reply[1])
                if entry is not None and entry.subs:
                    deliver(entry.subs, entry.name, None, reply[2])
            elif kind == b"pmessage" and len(reply) == 4:
                entry = wire.patterns.entries.get(reply[1])
                if entry is not None and entry.subs:
                    channel = reply[2][prefix:].decode("utf-8", "replace")
                    if not channel.startswith(RESERVED):  # other hubs' liveness channels
                        deliver(entry.subs, channel, entry.name, reply[3])
            else:
                wire.confirm(kind, reply[1])
            count += 1
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a flood must not starve the consumers

    async def _check_liveness(self) -> str | None:
        """Publish a token on our private channel and wait for it; a problem or None."""
        self._token_seq += 1
        token = b"%d" % self._token_seq
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._token = (token, seen)
        try:
            async with _driver.deadline(self._timeout):
                if await self._publish_token(token) < 1:
                    return "liveness token reached no subscriber"
                await seen
        except (asyncio.TimeoutError, rexc.TimeoutError):
            return f"liveness token not seen within {self._timeout}s"
        except Exception as exc:
            if not _driver.is_outage_error(exc):
                raise
            # The publisher failed fast (refused, reset): that says nothing about the
            # subscriber's own connection, whose reader notices a real drop by itself.
            _log.debug(
                "pubsub liveness publish failed: %s",
                describe_error(exc),
                extra=log_fields("pubsub", "pubsub_liveness_failed", describe_error(exc)),
            )
        finally:
            self._token = None
        return None

    async def _publish_token(self, token: bytes) -> int:
        # A private unpooled connection: never waits for the pool, never traced as a
        # command, works while the client fails fast. Its socket timeouts are longer than
        # the check's deadline, so the deadline decides.
        conn = self._probe
        if conn is None:
            timeout = self._timeout + 1.0
            conn = self._probe = self._client.backend.lone_connection(
                retry=None,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=0,
                client_name="gateway-redis-liveness",
            )
        try:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("PUBLISH", self._wire.liveness.wire, token, check_health=False)
            return int(await conn.read_response())
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
