"""Presence on the bridge's channels: joining, leaving, heartbeats, join/leave frames (private).

A socket subscribed to a channel whose rule has ``presence`` is a member of the channel's
presence (:class:`~gateway_redis.ChannelPresence`: user = the principal's subject, conn = a
random id given to the socket here). Nothing here is awaited by a request: a subscribe,
unsubscribe or close only *queues* the join or leave (:meth:`Presences.join`,
:meth:`~Presences.leave`, :meth:`~Presences.forget`, no await), and ONE task per bridge
(:meth:`Presences.run`) writes the queue to Redis in batches: per channel one script call
for all its queued leaves and one for its joins (up to 500 members a call), a few channels
at a time, so presence holds at most ``_PARALLEL`` pooled connections however many
sockets subscribe at once, and a Redis outage never fails a subscribe.

The queue is keyed by (channel, connection): a later change of the same pair replaces the
earlier one, so it holds at most one entry per subscription. It is bounded
(``_MAX_PENDING`` entries); when it is full a new entry is dropped and counted in
``gateway.ws.presence.dropped``: a dropped join is made by the next heartbeat (the socket
is still a member here), a dropped leave by the TTL. A batch that fails (Redis down) is
dropped the same way.

The same task is the heartbeat: every ``presence_ttl / 3`` seconds it rejoins every member
of this instance and reconciles (sockets subscribed or unsubscribed by other paths, the
server API or withdrawn permissions, join or leave there). An instance that dies stops its
heartbeats, so its sockets are gone from every reader within one ``presence_ttl``.

Join/leave frames (``{"type": "join" | "leave", "channel", "user", "conn"}``, rules with
``join_leave``) travel on ONE side channel per client, ``<invalidation bus channel>:
presence`` (reserved: no socket can subscribe to it), never on the channel itself: they
are not history messages and never reach library subscribers of the channel. Whoever sees
a change publishes it (the instance whose write joined or removed the member; for a
member found expired, whichever instance's call pruned it), one publish per batch; every
instance delivers it to its own sockets subscribed to the channel, as a message frame
(subject to the outbox bounds). Their cost is bounded: a change is published only while
the channel has at most the rule's ``join_leave_limit`` connections (counted by Redis
right after the write); above it the events are counted in
``gateway.ws.presence.suppressed`` and not sent, so filling a channel with n sockets
costs at most n x limit frames, not n^2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from gateway_redis.errors import RedisUnavailable
from gateway_redis.pubsub import (
    ChannelPresence,
    Message,
    PresenceChange,
    PresenceMember,
    PresenceStats,
)
from gateway_redis.support import log_fields
from middleware.telemetry import websocket_instruments
from middleware.websocket._connection import Connection, Frame

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient
    from gateway_redis.pubsub import Subscription
    from middleware.websocket.channels import ChannelPolicy

__all__ = ["Presences"]

_log = logging.getLogger("middleware.websocket.bridge")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_MAX_SUBJECT: Final = 256  # bytes: ChannelPresence's bound on user ids
_MAX_PENDING: Final = 50_000  # queued (channel, connection) writes
_MAX_EVENTS: Final = 10_000  # join/leave events waiting to be published
_CHUNK: Final = 500  # members per script call
_PARALLEL: Final = 4  # script calls in flight (pooled connections used by presence)
_LINGER: Final = 0.01  # seconds a wake-up waits for more writes to batch
_RETRY: Final = 1.0  # seconds after a failed batch
_FINAL_FLUSH: Final = 1.0  # seconds aclose gives the last leaves
_READ_WAIT: Final = 1.0  # seconds a presence request waits for queued writes of its channel


class Presences:
    """The bridge's presence members, their write queue, heartbeat and join/leave frames."""

    def __init__(
        self,
        client: RedisClient,
        policy: ChannelPolicy,
        ttl: float,
        conns: Iterable[Connection],
        sockets: Callable[[str], Iterable[Connection]],
    ) -> None:
        # conns: the registry's live set of open sockets (read, never changed here)
        self.store = ChannelPresence(client, ttl=ttl, on_expired=self._on_expired)
        self._client = client
        self._policy = policy
        self._conns = conns
        self._sockets = sockets
        self.channel = client.invalidation.channel + ":presence"
        self._ids: dict[Connection, str] = {}
        self._members: dict[str, set[Connection]] = {}  # channel -> local members
        # channel -> conn id -> member to join, or None to leave
        self._pending: dict[str, dict[str, PresenceMember | None]] = {}
        self._queued = 0
        self._expired: dict[str, list[PresenceMember]] = {}  # found by a call, not yet sent
        self._events: list[dict[str, str]] = []  # join/leave frames to publish
        self._wake = asyncio.Event()
        self._writing: set[str] = set()  # channels of the batch being written
        self._written = asyncio.Event()  # set (and replaced) when a batch is written
        self._sub: Subscription | None = None
        self._active = any(rule.presence for rule in policy.rules)
        metrics = websocket_instruments()
        self._dropped = metrics.ws_presence_dropped
        self._suppressed = metrics.ws_presence_suppressed

    def enabled(self, channel: str) -> bool:
        """Whether ``channel`` has presence."""
        return self._active and self._policy.presence(channel) is not None

    # -- the request path: queue only, never await ------------------------------------------

    def join(self, conn: Connection, channels: Iterable[str]) -> None:
        """Queue ``conn``'s join of those ``channels`` with presence it is subscribed to."""
        for channel in channels:
            if not self.enabled(channel) or channel not in conn.channels:
                continue
            member = self._member(conn)
            if member is not None:
                self._members.setdefault(channel, set()).add(conn)
                self._queue(channel, member.conn, member)

    def leave(self, conn: Connection, channels: Iterable[str]) -> None:
        """Queue ``conn``'s leave of ``channels`` (those it joined)."""
        conn_id = self._ids.get(conn)
        if conn_id is None:
            return
        for channel in channels:
            members = self._members.get(channel)
            if members is None or conn not in members:
                continue
            members.discard(conn)
            if not members:
                del self._members[channel]
            self._queue(channel, conn_id, None)

    def forget(self, conn: Connection) -> None:
        """The socket closed: queue its leaves and forget its id."""
        if conn in self._ids:
            self.leave(conn, [c for c, m in self._members.items() if conn in m])
            del self._ids[conn]

    # -- the presence requests --------------------------------------------------------------

    async def members(self, channel: str) -> list[PresenceMember]:
        """The channel's members (at most 1,000), after this instance's queued writes of
        the channel (waited for at most ``_READ_WAIT``). Raises :class:`RedisUnavailable`."""
        await self._settled(channel)
        found = await self.store.presence(channel)
        self._settle(channel, PresenceChange(connections=len(found)))
        return found

    async def stats(self, channel: str) -> PresenceStats:
        """The channel's counts, like :meth:`members`. Raises :class:`RedisUnavailable`."""
        await self._settled(channel)
        found = await self.store.presence_stats(channel)
        self._settle(channel, PresenceChange(connections=found.connections))
        return found

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Write queued joins and leaves, heartbeat and reconcile every ``ttl / 3`` seconds,
        publish join/leave frames (returns at once when no rule has presence)."""
        if not self._active:
            return
        beat_at = time.monotonic()
        while True:
            wait = beat_at - time.monotonic()
            if wait > 0 and not (self._pending or self._events):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                await asyncio.sleep(_LINGER)  # let a burst of subscribes batch up
            self._wake.clear()
            try:
                await self._listen()  # before any publish: this instance's frames come back
                await self._flush()
                if time.monotonic() >= beat_at:
                    started = time.monotonic()
                    await self._beat()
                    beat_at = started + self.store.ttl / 3  # a failed beat is retried
                await self._publish()
            except Exception as exc:  # the task lives on; the heartbeat repairs
                _log.log(
                    logging.DEBUG if isinstance(exc, RedisUnavailable) else logging.WARNING,
                    "presence write failed: %s",
                    exc,
                    extra=log_fields("websocket", "presence_write_failed", type(exc).__name__),
                )
                await asyncio.sleep(min(_RETRY, self.store.ttl / 3))

    async def aclose(self) -> None:
        """Give the last leaves (sockets closed at shutdown) a moment, stop listening."""
        if self._active:
            with contextlib.suppress(RedisUnavailable, asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_and_publish(), _FINAL_FLUSH)
        if self._sub is not None:
            await self._sub.close()

    # -- internals --------------------------------------------------------------------------

    def _member(self, conn: Connection) -> PresenceMember | None:
        if not _valid(conn):
            return None
        conn_id = self._ids.get(conn)
        if conn_id is None:
            conn_id = self._ids[conn] = secrets.token_urlsafe(12)
        return PresenceMember(conn.principal.subject, conn_id)

    def _queue(self, channel: str, conn_id: str, member: PresenceMember | None) -> None:
        ops = self._pending.get(channel)
        if ops is None or conn_id not in ops:
            if self._queued >= _MAX_PENDING:
                self._dropped.add(1)  # a join: the next heartbeat; a leave: the TTL
                return
            self._queued += 1
        if ops is None:
            ops = self._pending[channel] = {}
        ops[conn_id] = member
        self._wake.set()

    async def _flush_and_publish(self) -> None:
        await self._flush()
        await self._publish()

    async def _flush(self) -> None:
        pending, self._pending, self._queued = self._pending, {}, 0
        self._writing = set(pending)
        try:
            await self._write_all(list(pending.items()))
        except asyncio.CancelledError:
            self._requeue(pending)  # stopped mid-write (shutdown): aclose writes them again
            raise
        finally:
            self._writing = set()
            written, self._written = self._written, asyncio.Event()
            written.set()

    def _requeue(self, pending: dict[str, dict[str, PresenceMember | None]]) -> None:
        # Writes are idempotent, so a batch whose writes may or may not have happened is
        # queued again; an op queued since (newer) wins over the batch's.
        for channel, ops in pending.items():
            for conn_id, member in ops.items():
                newer = self._pending.get(channel)
                if newer is None or conn_id not in newer:
                    self._queue(channel, conn_id, member)

    async def _settled(self, channel: str) -> None:
        # A read waits (at most _READ_WAIT) for this instance's queued writes of the
        # channel: a socket sees its own join right after its "subscribed".
        deadline = time.monotonic() + _READ_WAIT
        while self._active and (channel in self._pending or channel in self._writing):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._written.wait(), left)

    async def _write_all(self, items: list[tuple[str, dict[str, PresenceMember | None]]]) -> None:
        # _PARALLEL channels at a time; on a failure the rest is dropped (and counted).
        for start in range(0, len(items), _PARALLEL):
            batch = items[start : start + _PARALLEL]
            results = await asyncio.gather(
                *(self._write(channel, ops) for channel, ops in batch), return_exceptions=True
            )
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                self._dropped.add(sum(len(ops) for _, ops in items[start:]))
                raise failed

    async def _write(self, channel: str, ops: dict[str, PresenceMember | None]) -> None:
        leaves = [conn_id for conn_id, member in ops.items() if member is None]
        joins = [member for member in ops.values() if member is not None]
        try:
            for start in range(0, len(leaves), _CHUNK):
                change = await self.store.leave(channel, leaves[start : start + _CHUNK])
                self._settle(channel, change)
            for start in range(0, len(joins), _CHUNK):
                change = await self.store.join(channel, joins[start : start + _CHUNK])
                self._settle(channel, change)
        except ValueError as exc:  # a name the library refuses: that channel has none
            _log.debug(
                "presence of %r not written: %s",
                channel,
                exc,
                extra=log_fields("websocket", "presence_write_refused", "bad_name"),
            )

    async def _beat(self) -> None:
        # Reconcile with the sockets' subscriptions (no await until _members is right),
        # write the leaves that found, then rejoin every member (the heartbeat).
        live = set(self._conns)
        wanted: dict[str, set[Connection]] = {}
        for conn in live:
            if conn.closing is None and _valid(conn):
                for channel in conn.channels:
                    if self.enabled(channel):
                        wanted.setdefault(channel, set()).add(conn)
        for channel, members in list(self._members.items()):
            for conn in members - wanted.get(channel, set()):
                self.leave(conn, [channel])
        for channel, conns in wanted.items():
            self._members.setdefault(channel, set()).update(conns)
        for conn in [c for c in self._ids if c not in live]:  # closed, never forgotten
            self.forget(conn)
        await self._flush()
        channels = list(self._members)
        for start in range(0, len(channels), _PARALLEL):
            if self._pending:
                await self._flush()  # a socket closing during a long heartbeat leaves now
            items = []
            for channel in channels[start : start + _PARALLEL]:
                # members as they are now: one that left meanwhile is not rejoined
                found = map(self._member, self._members.get(channel, ()))
                ops: dict[str, PresenceMember | None] = {m.conn: m for m in found if m}
                if ops:
                    items.append((channel, ops))
            await self._write_all(items)

    def _on_expired(self, channel: str, members: tuple[PresenceMember, ...]) -> None:
        self._expired.setdefault(channel, []).extend(members)

    def _settle(self, channel: str, change: PresenceChange) -> None:
        # The events of one call (and the expired members it found) become frames when the
        # channel's rule sends them and it is small enough; see the module docstring.
        expired = self._expired.pop(channel, ())
        rule = self._policy.presence(channel)
        if rule is None or not rule.join_leave:
            return
        events = [("join", m) for m in change.joined]
        events += [("leave", m) for m in (*change.left, *expired)]
        if not events:
            return
        count = change.connections
        if (count is not None and count > rule.join_leave_limit) or len(self._events) + len(
            events
        ) > _MAX_EVENTS:
            self._suppressed.add(len(events))
            return
        self._events += [
            {"type": kind, "channel": channel, "user": m.user, "conn": m.conn} for kind, m in events
        ]
        self._wake.set()

    async def _publish(self) -> None:
        while self._events:
            chunk = self._events[:_CHUNK]
            await self._client.publish(self.channel, chunk)
            del self._events[: len(chunk)]

    async def _listen(self) -> None:
        if self._sub is None or self._sub.closed:
            self._sub = await self._client.pubsub.subscribe(self.channel, on_message=self._deliver)

    def _deliver(self, message: Message) -> None:
        frames = message.data
        if not isinstance(frames, list):
            return
        for frame in frames:
            if not isinstance(frame, dict) or not isinstance(frame.get("channel"), str):
                continue
            channel = frame["channel"]
            shared = Frame(channel, _dumps(frame))  # built once, pushed to every socket
            for conn in self._sockets(channel):
                conn.push(shared)


def _valid(conn: Connection) -> bool:
    # Subjects over the library's 256 bytes (or empty) are not shown in presence.
    subject = conn.principal.subject
    return bool(subject) and len(subject.encode()) <= _MAX_SUBJECT
