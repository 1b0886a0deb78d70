"""Fan-out from Redis channels to sockets: one hub subscription per channel (private).

Every channel any socket of this bridge is subscribed to has one :class:`ChannelEntry`
holding one *callback* subscription on the process's :class:`~gateway_redis.PubSubHub`
(so 1,000 sockets on a channel are one entry, one Redis subscription, on the hub's one
connection). The hub's reader calls :meth:`Fanout._deliver` for each message: the frame is
built once and appended to each socket's outbox; nothing here ever awaits a socket, so
there is no pump task and a stalled socket cannot slow the reader.

Gaps: when the hub loses its connection it marks every subscription; after resubscribing
it calls the reconnect listener, which sends each affected socket one ``resync`` naming
its affected channels. A message that arrives before that listener ran carries
``gap_before`` and is preceded by a ``resync`` for its channel; either way each gap is
reported once, and before any message that followed it.

Channels with history (``history`` given, and it names one for the channel) are mended
instead: the entry remembers the position of the last message it delivered, holds live
messages after a gap, reads what followed that position from history, and sends the
sockets the missed messages, then the held ones, each once; ``resync`` only when history
cannot fill the gap. Live messages up to the last delivered position (still on their
way when history was read) are skipped. A channel that also received a message without
a position (a plain PUBLISH, e.g. from another service) is never mended: history cannot
know what such messages were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from opentelemetry import propagate, trace

from gateway_redis import telemetry
from gateway_redis.errors import RedisUnavailable
from gateway_redis.pubsub import ChannelHistory, Message, Position, PubSubHub, Subscription
from gateway_redis.support import cancel_and_wait, log_fields
from middleware.websocket import _protocol as proto
from middleware.websocket._connection import Connection, Frame
from middleware.websocket._held import Held, mended, pass_held

__all__ = ["ChannelEntry", "Fanout"]

_log = logging.getLogger("middleware.websocket.bridge")
_MEND_RETRIES = (0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)  # seconds before each history read
_COMPONENT = "websocket"


class ChannelEntry:
    """One channel: its sockets, its hub subscription, how many sockets want it, and the
    sockets still catching up (``held``: their live messages are kept, not sent)."""

    __slots__ = (
        "held", "last", "mending", "name", "opening", "plain", "prefix", "sockets", "sub",
        "users",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = proto.message_prefix(name)
        self.sockets: set[Connection] = set()
        self.held: dict[Connection, Held] = {}
        self.last: Position | None = None  # of the last message sent to ``sockets``
        self.mending: Held | None = None  # live messages held while a gap is mended
        self.plain = False  # a message without a position came: history cannot mend
        self.users = 0  # sockets subscribed or subscribing
        self.sub: Subscription | None = None
        self.opening: asyncio.Task[None] | None = None


class Fanout:
    """The bridge's channels on one hub; see the module docstring."""

    def __init__(
        self,
        hub: PubSubHub,
        history: Callable[[str], ChannelHistory | None] | None = None,
        *,
        hold: int = 100,
    ) -> None:
        self._hub = hub
        self._history = history
        self._hold = hold
        self._entries: dict[str, ChannelEntry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._remove_listener = hub.add_reconnect_listener(self._on_reconnect)

    @property
    def channels(self) -> int:
        """Channels with at least one socket (or one subscribing)."""
        return len(self._entries)

    async def subscribe(
        self, conn: Connection, names: Iterable[str], *, hold: int | None = None
    ) -> None:
        """Subscribe ``conn`` to ``names`` once Redis confirmed each (already subscribed
        names are skipped). All or nothing: raises :class:`RedisUnavailable` (nothing
        subscribed). On return ``conn`` receives every later message of each channel; the
        caller must queue its reply before awaiting anything else. With ``hold`` (a
        count), the messages are kept instead (up to ``hold`` per channel) until
        :meth:`release` hands them over."""
        if self._closed:
            raise RedisUnavailable("the websocket bridge is closed", reason="closed")
        acquired = [self._acquire(n) for n in dict.fromkeys(names) if n not in conn.channels]
        try:
            pending = [e.opening for e in acquired if e.sub is None and e.opening is not None]
            if pending:
                await asyncio.gather(*(asyncio.shield(t) for t in pending))
            if any(e.sub is None for e in acquired):
                raise RedisUnavailable("subscription was not confirmed", reason="down")
        except BaseException:
            for entry in acquired:
                await self._release(entry)
            raise
        if conn.closing is not None:
            for entry in acquired:
                await self._release(entry)
            return
        twice = []  # subscribed meanwhile by another task (the server API): keep one hold
        for entry in acquired:
            if entry.name in conn.channels:
                twice.append(entry)
                continue
            if hold is None:
                entry.sockets.add(conn)
            else:
                entry.held[conn] = Held(hold)
            conn.channels[entry.name] = entry
        for entry in twice:
            await self._release(entry)  # others hold it: returns without suspending

    def sockets(self, name: str) -> list[Connection]:
        """The sockets of channel ``name`` that are caught up (not still recovering)."""
        entry = self._entries.get(name)
        if entry is None:
            return []
        return [*entry.sockets, *(c for c, h in entry.held.items() if h.floor is not None)]

    def held(self, conn: Connection, name: str) -> Held | None:
        """What is held for ``conn`` on channel ``name`` (None: not held, or unsubscribed)."""
        entry = conn.channels.get(name)
        return None if entry is None else entry.held.get(conn)

    def rehold(self, conn: Connection, name: str) -> Held | None:
        """Start holding afresh (after a gap): returns the new holder, or None."""
        entry = conn.channels.get(name)
        old = None if entry is None else entry.held.get(conn)
        if entry is None or old is None:
            return None
        entry.held[conn] = fresh = Held(old.limit)
        return fresh

    def release(self, conn: Connection, name: str, floor: Position | None = None) -> None:
        """Stop holding: from now on ``conn`` gets ``name``'s messages as they come (the
        caller queued what was held first), except those up to ``floor``."""
        entry = conn.channels.get(name)
        held = None if entry is None else entry.held.get(conn)
        if entry is None or held is None:
            return
        if floor is None:
            del entry.held[conn]
            entry.sockets.add(conn)
        else:
            held.messages.clear()
            held.floor = floor

    def frame(self, name: str, message: Message) -> Frame:
        """The message frame of ``message`` on channel ``name`` (what sockets get)."""
        text = proto.message_prefix(name) + proto.message_data(message)
        return Frame(name, text + proto.position_suffix(message) + "}")

    async def unsubscribe(self, conn: Connection, names: Iterable[str]) -> None:
        """Remove ``conn`` from ``names`` (unknown names are ignored); queued messages of
        those channels are discarded. ``conn`` gets no message of any of them once this is
        called (every channel is detached before the first await)."""
        detached = []
        for name in names:
            entry = conn.channels.pop(name, None)
            if entry is None:
                continue
            entry.sockets.discard(conn)
            entry.held.pop(conn, None)
            conn.forget_channel(name)
            detached.append(entry)
        for entry in detached:
            await self._release(entry)

    async def release_all(self, conn: Connection) -> None:
        """Remove ``conn`` from every channel (the socket closed)."""
        await self.unsubscribe(conn, list(conn.channels))

    def check(self) -> None:
        """Housekeeping: a subscription the hub ended while sockets still use it is opened
        again (the hub was closed or failed, or someone called ``hub.unsubscribe``)."""
        for entry in list(self._entries.values()):
            sub = entry.sub
            if sub is not None and sub.closed and entry.opening is not None:
                if not entry.opening.done():
                    continue
                entry.sub = None
                entry.opening = self._start(self._reopen(entry))

    async def aclose(self) -> None:
        """Close every hub subscription and stop every task; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._remove_listener()
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            if entry.opening is not None:
                entry.opening.cancel()
        await cancel_and_wait(*self._tasks)
        for entry in entries:
            if entry.sub is not None:
                await entry.sub.close()

    # -- internals ------------------------------------------------------------------------

    def _start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name="gateway-ws-subscribe")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _acquire(self, name: str) -> ChannelEntry:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = ChannelEntry(name)
            entry.opening = self._start(self._open(entry))
        entry.users += 1
        return entry

    async def _open(self, entry: ChannelEntry) -> None:
        try:
            sub = await self._hub.subscribe(
                entry.name, on_message=functools.partial(self._deliver, entry)
            )
        except BaseException:
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]  # the next subscriber starts afresh
            raise
        if entry.users <= 0 or self._entries.get(entry.name) is not entry:
            await sub.close()  # everybody left while Redis was confirming
            return
        entry.sub = sub

    async def _reopen(self, entry: ChannelEntry) -> None:
        try:
            await self._open(entry)
        except RedisUnavailable as exc:
            _log.warning(
                "websocket channel could not be resubscribed (%s)",
                exc.reason,
                extra=log_fields(_COMPONENT, "websocket_resubscribe_failed", exc.reason),
            )
            for conn in list(entry.sockets):
                conn.close(1011, "subscription lost")
            return
        text = proto.resync_frame([entry.name])
        for conn in entry.sockets:
            conn.push_control(text)

    async def _release(self, entry: ChannelEntry) -> None:
        entry.users -= 1
        if entry.users > 0:
            return
        if self._entries.get(entry.name) is entry:
            del self._entries[entry.name]
        opening = entry.opening
        if opening is not None and not opening.done():
            opening.cancel()
        sub, entry.sub = entry.sub, None
        if sub is not None:
            await sub.close()

    def _deliver(self, entry: ChannelEntry, message: Message) -> None:
        # Runs in the hub's reader for every message: no awaits, no per-socket encoding.
        sockets = entry.sockets
        extra = pass_held(entry, message) if entry.held else ()
        if entry.mending is not None:
            entry.mending.add(message)
            sockets = set()
        elif message.gap_before:
            if self._start_mending(entry, message):
                sockets = set()
            else:
                text = proto.resync_frame([entry.name])
                for conn in sockets:
                    conn.push_control(text)
        if message.offset is None:
            entry.plain = True
        elif sockets:
            last = entry.last
            if last is not None and last.epoch == message.epoch and message.offset <= last.offset:
                sockets = set()  # sent already (mended from history before it came)
            else:
                entry.last = Position(message.epoch or "", message.offset)
        if not sockets and not extra:
            return
        text = entry.prefix + proto.message_data(message) + proto.position_suffix(message) + "}"
        frame = Frame(entry.name, text)
        for conn in sockets:
            conn.push(frame)
        for conn in extra:
            conn.push(frame)
        if message.trace_context is not None:
            _trace_delivery(entry.name, message, len(sockets))

    def _start_mending(self, entry: ChannelEntry, first: Message | None) -> bool:
        # Mend a gap from history when the channel has some and a position is known.
        history = None if self._history is None else self._history(entry.name)
        if history is None or entry.last is None or entry.plain or self._closed:
            return False
        entry.mending = held = Held(self._hold)
        if first is not None:
            held.messages.append(first)
        self._start(self._mend(entry, history, entry.last))
        return True

    async def _mend(self, entry: ChannelEntry, history: ChannelHistory, since: Position) -> None:
        page, failure = None, ""
        for delay in _MEND_RETRIES:  # the command pool may see Redis back a little later
            await asyncio.sleep(delay)
            if entry.mending is None or entry.mending.gap:
                break
            try:
                # As text, never decoded: what a client's recover costs (issue 15).
                page = await history.read_payloads(
                    entry.name, since=since, limit=min(history.size, 10_000)
                )
                break
            except (RedisUnavailable, OSError) as exc:
                failure = type(exc).__name__
        else:
            _log.info(
                "websocket channel gap not mended from history: %s",
                failure,
                extra=log_fields(_COMPONENT, "websocket_mend_failed", failure),
            )
        held, entry.mending = entry.mending, None
        if held is None or self._entries.get(entry.name) is not entry:
            return
        sent = mended(entry, page, held, self.frame)
        _log.info(
            "websocket channel gap mended from history (%d messages)",
            sent,
            extra=log_fields(_COMPONENT, "websocket_mended", messages=sent),
        )

    def _on_reconnect(self) -> None:
        affected: dict[Connection, list[str]] = {}
        for entry in self._entries.values():
            if entry.sub is not None and entry.sub.take_gap():
                for conn, held in entry.held.items():
                    held.gap = True
                    if held.floor is not None:  # caught up already: resync like any other
                        affected.setdefault(conn, []).append(entry.name)
                if entry.mending is not None:
                    entry.mending.gap = True  # mended() sends the resync
                elif not self._start_mending(entry, None):
                    for conn in entry.sockets:
                        affected.setdefault(conn, []).append(entry.name)
        for conn, names in affected.items():
            conn.push_control(proto.resync_frame(sorted(names)))
        if affected:
            _log.info(
                "websocket resync sent to %d sockets after a reconnect",
                len(affected),
                extra=log_fields(_COMPONENT, "websocket_resync", sockets=len(affected)),
            )


def _trace_delivery(channel: str, message: Message, receivers: int) -> None:
    """A CONSUMER span, child of the publisher's span, when that trace is sampled."""
    with contextlib.suppress(Exception):  # tracing never breaks delivery
        assert message.trace_context is not None
        context = propagate.extract(message.trace_context)
        parent = trace.get_current_span(context).get_span_context()
        if not (parent.is_valid and parent.trace_flags.sampled):
            return
        span = telemetry.tracer.start_span(
            "gateway.ws deliver", context=context, kind=trace.SpanKind.CONSUMER
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": "redis",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": channel,
                    "gateway.ws.receivers": receivers,
                }
            )
        span.end()
