"""Presence on the bridge's channels: joining, leaving, heartbeats, join/leave frames (private).

A socket subscribed to a channel whose rule has ``presence`` is a member of the channel's
presence (:class:`~gateway_redis.ChannelPresence`: user = the principal's subject, conn = a
random id given to the socket here). It joins right after its ``subscribed`` reply and
leaves on ``unsubscribe`` or close (best effort: a failed leave is left to the TTL). A
heartbeat task rejoins every member of this instance every ``presence_ttl / 3`` seconds
and reconciles: sockets subscribed or unsubscribed by other paths (the server API,
withdrawn permissions) join or leave there. An instance that dies stops its heartbeats,
so its sockets are gone from every reader within one ``presence_ttl``.

Join/leave frames (``{"type": "join" | "leave", "channel", "user", "conn"}``, rules with
``join_leave``) travel on ONE side channel per client, ``<invalidation bus channel>:
presence`` (reserved: no socket can subscribe to it), never on the channel itself: they
are not history messages and never reach library subscribers of the channel. Whoever sees
a change publishes it (the instance where a socket joined or left; for a member found
expired, whichever instance's call pruned it); every instance delivers it to its own
sockets subscribed to the channel, as a message frame (subject to the outbox bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from gateway_redis.errors import RedisUnavailable
from gateway_redis.pubsub import ChannelPresence, Message, PresenceChange, PresenceMember
from gateway_redis.support import log_fields
from middleware.websocket._connection import Connection, Frame

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient
    from gateway_redis.pubsub import Subscription
    from middleware.websocket.channels import ChannelPolicy

__all__ = ["Presences"]

_log = logging.getLogger("middleware.websocket.bridge")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_MAX_SUBJECT = 256  # bytes: ChannelPresence's bound on user ids
_LEAVE_TIMEOUT = 4.0  # a closing socket leaves within 5 s, or the TTL does it


class Presences:
    """The bridge's presence members, their heartbeat and the join/leave side channel."""

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
        self._members: dict[str, set[Connection]] = {}  # channel -> joined local sockets
        self._sub: Subscription | None = None
        self._publishes: set[asyncio.Task[None]] = set()

    def conn_id(self, conn: Connection) -> str:
        """The socket's presence connection id (made on first use)."""
        found = self._ids.get(conn)
        if found is None:
            found = self._ids[conn] = secrets.token_urlsafe(12)
        return found

    def enabled(self, channel: str) -> bool:
        """Whether ``channel`` has presence."""
        return self._policy.presence(channel) is not None

    async def join(self, conn: Connection, channels: Iterable[str]) -> None:
        """``conn`` joins those of ``channels`` with presence that it is subscribed to."""
        for channel in channels:
            member = self._member(conn)
            if self.enabled(channel) and channel in conn.channels and member is not None:
                self._members.setdefault(channel, set()).add(conn)
                with contextlib.suppress(RedisUnavailable):  # the heartbeat retries
                    await self._listen()  # the first join's frame is not missed
                    self._emit(channel, await self.store.join(channel, [member]))

    async def leave(self, conn: Connection, channels: Iterable[str]) -> None:
        """``conn`` leaves ``channels`` (those it joined); best effort, bounded in time."""
        conn_id = self._ids.get(conn)
        for channel in channels:
            members = self._members.get(channel)
            if conn_id is None or members is None or conn not in members:
                continue
            members.discard(conn)
            if not members:
                del self._members[channel]
            try:
                change = await asyncio.wait_for(
                    self.store.leave(channel, [conn_id]), _LEAVE_TIMEOUT
                )
            except (RedisUnavailable, TimeoutError):
                continue  # the TTL removes it
            self._emit(channel, change)

    async def forget(self, conn: Connection) -> None:
        """The socket closed: leave everything."""
        await self.leave(conn, [c for c, m in self._members.items() if conn in m])
        self._ids.pop(conn, None)

    async def run(self) -> None:
        """Heartbeat and reconcile every ``ttl / 3`` seconds; subscribe the side channel
        (returns at once when no rule has presence)."""
        while any(rule.presence for rule in self._policy.rules):
            try:
                await self._listen()
                await self._beat()
            except RedisUnavailable as exc:
                _log.debug(
                    "presence heartbeat failed: %s",
                    exc,
                    extra=log_fields("websocket", "presence_heartbeat_failed", str(exc)),
                )
            await asyncio.sleep(self.store.ttl / 3)

    def _member(self, conn: Connection) -> PresenceMember | None:
        # Subjects over the library's 256 bytes are not shown in presence.
        subject = conn.principal.subject
        if len(subject.encode()) > _MAX_SUBJECT:
            return None
        return PresenceMember(subject, self.conn_id(conn))

    async def _listen(self) -> None:
        if self._sub is None or self._sub.closed:
            self._sub = await self._client.pubsub.subscribe(self.channel, on_message=self._deliver)

    async def _beat(self) -> None:
        wanted: dict[str, set[Connection]] = {}
        for conn in list(self._conns):
            if conn.closing is None and self._member(conn) is not None:
                for channel in conn.channels:
                    if self.enabled(channel):
                        wanted.setdefault(channel, set()).add(conn)
        for channel, members in list(self._members.items()):
            gone = members - wanted.get(channel, set())
            for conn in gone:
                await self.leave(conn, [channel])
        for channel, conns in wanted.items():
            self._members.setdefault(channel, set()).update(conns)
            batch = [m for m in map(self._member, conns) if m is not None]
            for start in range(0, len(batch), 500):  # bounded script calls
                self._emit(channel, await self.store.join(channel, batch[start : start + 500]))

    def _on_expired(self, channel: str, members: tuple[PresenceMember, ...]) -> None:
        self._emit(channel, PresenceChange((), members))

    def _emit(self, channel: str, change: PresenceChange) -> None:
        rule = self._policy.presence(channel)
        if rule is None or not rule.join_leave or not (change.joined or change.left):
            return
        events = [("join", m) for m in change.joined] + [("leave", m) for m in change.left]
        body = [{"type": t, "channel": channel, "user": m.user, "conn": m.conn} for t, m in events]
        task = asyncio.get_running_loop().create_task(self._publish(body))
        self._publishes.add(task)
        task.add_done_callback(self._publishes.discard)

    async def _publish(self, frames: list[dict[str, str]]) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self._client.publish(self.channel, frames)

    def _deliver(self, message: Message) -> None:
        frames = message.data
        if not isinstance(frames, list):
            return
        for frame in frames:
            if not isinstance(frame, dict) or not isinstance(frame.get("channel"), str):
                continue
            channel = frame["channel"]
            text = _dumps(frame)
            for conn in self._sockets(channel):
                conn.push(Frame(channel, text))

    async def aclose(self) -> None:
        """Stop listening; pending join/leave publishes are awaited briefly."""
        if self._sub is not None:
            await self._sub.close()
        if self._publishes:
            await asyncio.wait(set(self._publishes), timeout=1.0)
