"""Pub/sub over one shared subscriber connection: JSON messages, bounded buffers, reconnects.

::

    async with await client.subscribe("orders", "alerts") as sub:
        async for message in sub:          # Message(channel, payload, data, ...)
            if message.gap_before:         # messages may have been lost: refetch state
                ...

How it works (details in :mod:`gateway_redis._pubsub_conn`):

* One subscriber connection per hub, outside the command pool, no read timeout.
  SUBSCRIBE/PSUBSCRIBE are reference counted: 1,000 subscriptions to 50 channels are one
  connection and 50 Redis subscriptions.
* One supervisor task drives that raw connection; redis-py's ``PubSub`` is not used because
  it reconnects and resubscribes silently. Every drop is seen, marks every subscription with
  a gap, and is repaired with jittered exponential backoff (capped at 1 s). An unresponsive
  server or a failed reconnect holds the client down (``hold_down("pubsub")``) at once; a
  plain drop (CLIENT KILL) only if it is not repaired within one liveness interval.
* ``subscribe()`` returns once Redis confirmed every name. Confirmations arrive in command
  order and are matched one by one, so concurrent first subscribers all get served.
* Liveness: after ``liveness_interval`` seconds of silence the hub publishes a token (over
  a private unpooled connection: no pool wait, no command span) on a private channel it is
  subscribed to. Not seen within ``liveness_timeout`` (a frozen server keeps TCP open and
  says nothing) means the connection is dead.
* The reader decodes each message once and appends it to every matching subscription's
  bounded buffer, dropping the oldest when full. It never waits for a consumer.

Patterns are for trusted, fixed strings only: never build a PSUBSCRIBE pattern from user
input (a pattern like ``*`` would receive every channel).

Sharded channels (``RedisConfig.sharded_channels``: exact names and ``prefix*`` entries)
use SPUBLISH and SSUBSCRIBE instead (details in :mod:`gateway_redis._pubsub_shards`). In
Redis Cluster a sharded message goes to the primary owning the channel's hash slot and
stays in that shard, instead of being broadcast to every node: the way to scale pub/sub
with the cluster. The hub subscribes each sharded channel on a connection to the node that
owns its slot (one per such node, next to the classic connection), with the same
guarantees: ``subscribe()`` returns once Redis confirmed, reference counting, bounded
buffers, callbacks, liveness (PING on each shard connection), and gaps: when a node is
lost, fails over or gives a slot away (resharding), its channels follow the slot to the
new owner and every affected subscription is marked with a gap (disconnect and reconnect
listeners run). The setting applies in every mode (standalone and Sentinel too, Redis 7+),
so an application behaves the same in development as on the cluster. Sharded and classic
pub/sub are separate namespaces: a sharded channel receives only SPUBLISH (redis-cli
``SPUBLISH``, go-redis ``SPublish``), never PUBLISH, and patterns never receive sharded
messages: :meth:`PubSubHub.psubscribe` refuses a pattern that can only match sharded
channels and logs a warning for one that may match some.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace

from gateway_redis import _pubsub_conn as _wire
from gateway_redis import _pubsub_shards as _shards
from gateway_redis import telemetry
from gateway_redis._driver import deadline
from gateway_redis._pubsub_sentinel import SwitchWatch
from gateway_redis.client import ClientState
from gateway_redis.errors import RedisUnavailable, SerializationError, SubscriptionClosed
from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

__all__ = [
    "Message",
    "MessageCallback",
    "PubSubHub",
    "PubSubStats",
    "ReconnectListener",
    "Subscription",
]

_log = logging.getLogger(__name__)
_WARN_EVERY = 10.0  # seconds between overflow warnings of one subscription

ReconnectListener = Callable[[], None]
"""Called with no arguments when the subscriber connection is lost or restored."""
MessageCallback = Callable[["Message"], None]
"""``on_message(message)`` for callback subscriptions; runs in the hub's reader."""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One received message. Shared by every subscription that receives it: do not mutate.

    ``channel`` is the channel name as the caller knows it (without ``channel_prefix``);
    ``pattern`` is the subscribed pattern for pattern subscriptions, else None. ``payload``
    is the text exactly as the publisher wrote it (for our own trace envelope, the user's
    JSON inside it); ``data`` is the decoded JSON, or None when the payload is not JSON.
    ``trace_context`` holds the W3C ``traceparent``/``tracestate`` headers carried by the
    envelope (pass it to ``opentelemetry.propagate.extract``), else None. ``gap_before`` is
    True on the first message a subscription gets after messages may have been lost
    (buffer overflow or reconnect).
    """

    channel: str
    payload: str
    data: Any
    pattern: str | None = None
    trace_context: Mapping[str, str] | None = None
    gap_before: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class PubSubStats:
    """A snapshot of a hub, for metrics. ``dropped`` counts every message ever dropped.

    ``channels`` counts every subscribed Redis channel, of which ``sharded_channels``
    are sharded; ``shard_connections`` counts the live per-node sharded connections.
    ``reconnects`` counts resubscriptions after a lost connection (or a moved slot).
    """

    subscriptions: int
    channels: int
    patterns: int
    reconnects: int
    dropped: int
    connected: bool
    sharded_channels: int = 0
    shard_connections: int = 0


class _End(enum.Enum):
    CLOSED = "closed"  # by its owner: buffer discarded, iteration stops
    UNSUBSCRIBED = "unsubscribed"  # no channel left: buffered messages, then stop
    HUB_CLOSED = "hub_closed"  # buffered messages, then SubscriptionClosed(reason="closed")
    FAILED = "failed"  # buffered messages, then SubscriptionClosed(reason="failed")


class Subscription:
    """Messages from some channels or patterns, in a bounded buffer. Get one from
    :meth:`PubSubHub.subscribe` or :meth:`PubSubHub.psubscribe`.

    Iterate with ``async for``; use ``async with`` or :meth:`close` so the hub can
    unsubscribe. When the buffer (``buffer_size`` messages) is full the oldest message is
    dropped, ``dropped`` grows and the next message has ``gap_before=True``. Iteration
    stops after :meth:`close` or when :meth:`PubSubHub.unsubscribe` took its last channel;
    it raises :class:`SubscriptionClosed` (``reason="closed"`` when the hub closed,
    ``"failed"`` when it broke) after the buffered messages are consumed.

    A *callback subscription* (``subscribe(..., on_message=f)``) has no buffer and cannot
    be iterated: the hub's reader calls ``f(message)`` for each message as it arrives
    (``gap_before`` set as above). ``f`` must return quickly, never block, and must not
    subscribe or unsubscribe synchronously; its exceptions are logged and swallowed.
    Check :attr:`closed` to learn that the hub ended it.
    """

    def __init__(
        self, hub: PubSubHub, buffer_size: int, on_message: MessageCallback | None = None
    ) -> None:
        self._hub = hub
        self._callback = on_message
        self._size = buffer_size
        self._buffer: deque[Message] = deque()
        self._event = asyncio.Event()
        self._channels: dict[bytes, str] = {}
        self._patterns: dict[bytes, str] = {}
        self._end: _End | None = None
        self._released = False
        self._active = False  # subscribe() returned: a later reconnect is a gap for it
        self._gap = False
        self._gaps = 0
        self._dropped = 0
        self._unreported = 0
        self._warned_at = float("-inf")

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this subscription receives (names without the channel prefix)."""
        return tuple(self._channels.values())

    @property
    def patterns(self) -> tuple[str, ...]:
        """The patterns this subscription receives."""
        return tuple(self._patterns.values())

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full."""
        return self._dropped

    @property
    def gaps(self) -> int:
        """How many times messages may have been lost (overflow episodes and reconnects)."""
        return self._gaps

    @property
    def pending(self) -> int:
        """Messages waiting in the buffer."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        """True once the subscription ended, for whatever reason."""
        return self._end is not None

    def take_gap(self) -> bool:
        """True if messages may have been lost since the last message taken; clears the flag.

        For consumers that want to resync at once rather than on the next message (which
        then has ``gap_before=False``).
        """
        gap, self._gap = self._gap, False
        return gap

    def drain(self) -> list[Message]:
        """Take every buffered message without waiting (for batching); may be empty."""
        messages = []
        while self._buffer:
            messages.append(self._take())
        return messages

    async def close(self) -> None:
        """End the subscription; the hub unsubscribes when its last subscriber leaves.

        Idempotent; buffered messages are discarded. Never raises.
        """
        self._finish(_End.CLOSED)
        self._hub._release(self)

    def __aiter__(self) -> Subscription:
        if self._callback is not None:
            raise TypeError("a callback subscription cannot be iterated")
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._buffer:
                return self._take()
            end = self._end
            if end is _End.CLOSED or end is _End.UNSUBSCRIBED:
                raise StopAsyncIteration
            if end is _End.HUB_CLOSED:
                raise SubscriptionClosed("the pub/sub hub was closed", reason="closed")
            if end is _End.FAILED:
                raise SubscriptionClosed("the pub/sub listener failed", reason="failed")
            self._event.clear()
            await self._event.wait()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self._end.value if self._end is not None else "open"
        return (
            f"<Subscription channels={len(self._channels)} patterns={len(self._patterns)} "
            f"pending={len(self._buffer)}/{self._size} dropped={self._dropped} {state}>"
        )

    # -- called by the hub -------------------------------------------------------------

    def _take(self) -> Message:
        message = self._buffer.popleft()
        if self._gap:
            self._gap = False
            message = dataclasses.replace(message, gap_before=True)
        return message

    def _push(self, message: Message) -> None:
        callback = self._callback
        if callback is not None:
            if self._gap:
                self._gap = False
                message = dataclasses.replace(message, gap_before=True)
            try:
                callback(message)
            except Exception:  # a subscriber can never break the reader
                _log.exception(
                    "pubsub message callback failed on %s",
                    self._describe(),
                    extra=log_fields("pubsub", "pubsub_callback_failed"),
                )
            return
        if len(self._buffer) >= self._size:
            self._buffer.popleft()
            self._dropped += 1
            self._unreported += 1
            self._hub._count_drop()
            self._mark_gap()
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                _log.warning(
                    "pubsub subscriber too slow: dropped %d oldest messages (%d in all, "
                    "buffer %d) on %s",
                    self._unreported,
                    self._dropped,
                    self._size,
                    self._describe(),
                    extra={
                        "component": "pubsub",
                        "event": "pubsub_overflow",
                        "dropped": self._dropped,
                    },
                )
                self._warned_at, self._unreported = now, 0
        self._buffer.append(message)
        self._event.set()

    def _mark_gap(self) -> None:
        if not self._gap:
            self._gap = True
            self._gaps += 1

    def _finish(self, end: _End) -> None:
        if self._end is None or end is _End.CLOSED:
            self._end = end
        if end is _End.CLOSED:
            self._buffer.clear()
        self._event.set()

    def _describe(self) -> str:
        names = [*self._channels.values(), *self._patterns.values()]
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        return ", ".join(repr(n) for n in names[:3]) + more


class PubSubHub:
    """The process's pub/sub: publishing, and one subscriber connection for every subscription
    (plus one per node serving sharded channels, when some are configured).

    Reached as ``client.pubsub`` (the client creates it lazily and closes it with itself).
    ``liveness_interval`` (seconds, default 0.5) is how long a subscriber connection may
    stay silent before the hub checks it; ``liveness_timeout`` (seconds, default 0.8) is
    how long the check may take before the connection counts as dead. With the defaults a
    frozen server is noticed within about 1.6 s. Channels listed in the configuration's
    ``sharded_channels`` use sharded pub/sub (see the module docstring).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        liveness_interval: float = 0.5,
        liveness_timeout: float = 0.8,
    ) -> None:
        if not liveness_interval > 0 or not liveness_timeout > 0:
            raise ValueError("liveness_interval and liveness_timeout must be > 0 seconds")
        config = client.config
        self._client = client
        name = f"{_wire.RESERVED}liveness:{secrets.token_hex(8)}"
        self._wire: _wire.Wire[Subscription] = _wire.Wire(config.channel_prefix, name)
        self._listener = _wire.Listener(
            client,
            self._wire,
            deliver=_fan_out,
            on_lost=self._on_lost,
            on_reconnect=self._on_reconnect,
            on_failed=self._on_failed,
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
        )
        self._sharded = _shards.ShardedNames(config.sharded_channels)
        self._shards: _shards.Shards[Subscription] = _shards.Shards(
            client,
            config.channel_prefix,
            deliver=_fan_out,
            on_lost=self._on_shard_lost,
            on_regained=self._on_reconnect,
            on_refused=self._on_refused,
            on_failed=self._on_failed,
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
        )
        self._warned_patterns: set[str] = set()
        self._switch = SwitchWatch(client, self._on_switch) if config.mode == "sentinel" else None
        self._subscribe_timeout = config.dial_timeout + config.operation_timeout
        self._subs: set[Subscription] = set()
        self._on_reconnected: list[ReconnectListener] = []
        self._on_disconnected: list[ReconnectListener] = []
        self._closed = self._failed = False
        self._dropped_total = 0
        self._metrics = telemetry.instruments()

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, channel: str, message: Any) -> int:
        """Publish ``message`` as compact JSON on ``channel``; returns the receiver count.

        The count is Redis's: connections that received it (a hub counts once however many
        subscriptions it serves). Serialized before anything is sent: a value that is not
        JSON (or contains NaN) raises :class:`SerializationError` and nothing is published.
        When the caller has an active OpenTelemetry span, the JSON travels in a small
        envelope carrying the trace context; without one it goes out as is. Sent at most
        once (never retried). A sharded channel is published with SPUBLISH (in Cluster
        mode to the primary owning its slot; the count is then that shard's subscribers).
        Raises :class:`RedisUnavailable` (at once while Redis is known to be down),
        :class:`TypeError`/:class:`ValueError` for a bad channel name.
        """
        (name,) = _wire.check_names((channel,), "channel")
        try:
            text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            body = text.encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"message is not JSON-serializable: {exc}") from exc
        sharded = self._sharded.match(name)
        target = self._wire.channels.key(name)
        # Only a publish that is part of a trace (the caller has a span) carries context;
        # otherwise the message goes out as plain JSON, readable by any other publisher's
        # subscribers (a Go service, redis-cli), even with an SDK installed.
        traced = trace.get_current_span().get_span_context().is_valid
        with telemetry.tracer.start_as_current_span(
            "gateway.pubsub publish", kind=trace.SpanKind.PRODUCER
        ) as span:
            carrier: dict[str, str] = {}
            if traced:
                propagate.inject(carrier)
            payload = _wire.encode_payload(body, carrier)
            receivers: int = await self._client.execute(
                "publish",
                lambda r: (r.spublish if sharded else r.publish)(target, payload),
                retry=False,
            )
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.system": "redis",
                        "messaging.operation.type": "send",
                        "messaging.destination.name": name,
                        "gateway.pubsub.receivers": receivers,
                        "gateway.pubsub.sharded": sharded,
                    }
                )
        return receivers

    # -- subscribing ----------------------------------------------------------------------

    async def subscribe(
        self, *channels: str, buffer_size: int = 100, on_message: MessageCallback | None = None
    ) -> Subscription:
        """A subscription to ``channels``, returned once Redis confirmed every one of them.

        ``buffer_size`` (messages, >= 1) bounds its buffer. With ``on_message`` it is a
        callback subscription instead (see :class:`Subscription`): no buffer, no queueing,
        the callback runs in the reader for every message, one call per message however
        many channels the subscription has. Raises :class:`RedisUnavailable`
        at once when Redis is known to be unreachable (the hub's last connection attempt
        failed, or the client is down before the hub ever connected). While the hub is
        merely reconnecting after a drop the subscription is registered and confirmed on
        the new connection; if that takes longer than ``dial_timeout + operation_timeout``
        it raises ``RedisUnavailable(reason="timeout")``. Sharded channels are subscribed
        on their node's connection (raises at once while that node is known unreachable);
        one Redis refuses for good (ACL ``NOPERM``, or a server without sharded pub/sub)
        raises ``RedisUnavailable(reason="misconfigured")``. Raises :class:`TypeError` /
        :class:`ValueError` for bad names (empty, over 1 KiB, reserved) or sizes.
        """
        names = _wire.check_names(channels, "channel")
        if on_message is not None and not callable(on_message):
            raise TypeError("on_message must be callable")
        return await self._open(names, [], buffer_size, on_message)

    async def psubscribe(self, *patterns: str, buffer_size: int = 100) -> Subscription:
        """Like :meth:`subscribe`, for glob ``patterns``; for trusted, fixed patterns only.

        Never pass user input here. Messages carry the matching channel and the pattern.
        Patterns are classic pub/sub: Redis never delivers sharded (SPUBLISH) messages to
        them. A pattern that can only match sharded channels (``"orders:*"`` when
        ``"orders:*"`` is sharded) raises :class:`ValueError`; one that may match some
        (``"*"``) is subscribed, with a warning logged once: it receives the classic
        channels only.
        """
        names = _wire.check_names(patterns, "pattern")
        for name in names:
            overlap = self._sharded.pattern_overlap(name)
            if overlap == "all":
                raise ValueError(
                    f"pattern {name!r} only matches sharded channels "
                    f"(sharded_channels={self._sharded.entries!r}), and sharded messages "
                    "never reach pattern subscriptions: subscribe to the channels by name"
                )
            if overlap == "some" and name not in self._warned_patterns:
                self._warned_patterns.add(name)
                _log.warning(
                    "pubsub pattern %r may match sharded channels (%s); their messages "
                    "are published with SPUBLISH and never reach pattern subscriptions",
                    name,
                    ", ".join(self._sharded.entries),
                    extra={"component": "pubsub", "event": "pubsub_pattern_sharded"},
                )
        return await self._open([], names, buffer_size)

    async def unsubscribe(self, *channels: str) -> None:
        """End every subscription of this process to ``channels`` (as the Go service does).

        The channels are removed from each subscription; one left with nothing ends its
        iteration after its buffered messages. Redis is told without waiting for its reply.
        """
        table: _wire.Table[Subscription] | _shards.Shards[Subscription]
        for name in _wire.check_names(channels, "channel"):
            table = self._shards if self._sharded.match(name) else self._wire.channels
            key = table.key(name)
            entry = table.entries.get(key)
            for sub in list(entry.subs) if entry is not None else ():
                sub._channels.pop(key, None)
                table.release(key, sub)
                if not sub._channels and not sub._patterns:
                    sub._released = True
                    self._subs.discard(sub)
                    sub._finish(_End.UNSUBSCRIBED)
        self._listener.kick()

    def start(self) -> None:
        """Open the subscriber connection now, without waiting for it (idempotent).

        ``subscribe()`` does this by itself; an application calls it at startup when it
        wants the liveness check (readiness within ~2 s of a frozen server) from the start.
        Needs a running event loop. With Sentinel it also starts listening for the
        sentinels' ``+switch-master``, so the subscriber connections retry at once after a
        failover instead of at their next backoff step.
        """
        if not self._closed:
            self._listener.start()
            if self._switch is not None:
                self._switch.start()

    def add_reconnect_listener(self, listener: ReconnectListener) -> Callable[[], None]:
        """Call ``listener()`` after every resubscription following a lost connection.

        Every subscription that existed then is marked with a gap (messages may have been
        missed: time to resync). Listeners run on the event loop and must not block;
        exceptions are logged. Returns a function that removes the listener.
        """
        return _add_listener(self._on_reconnected, listener)

    def add_disconnect_listener(self, listener: ReconnectListener) -> Callable[[], None]:
        """Call ``listener()`` as soon as the subscriber connection is lost.

        Until the reconnect listeners run, messages are being missed (an L1 cache fed by
        invalidations should be bypassed). Same rules as :meth:`add_reconnect_listener`.
        """
        return _add_listener(self._on_disconnected, listener)

    @property
    def connected(self) -> bool:
        """True while the subscriber connection is up and fully subscribed (and so is every
        node's connection for sharded channels)."""
        return self._listener.live and self._shards.live

    def stats(self) -> PubSubStats:
        """Counts for metrics: subscriptions, Redis channels and patterns, reconnects, drops."""
        shards = self._shards
        return PubSubStats(
            subscriptions=len(self._subs),
            channels=len(self._wire.channels.entries) + len(shards.entries),
            patterns=len(self._wire.patterns.entries),
            reconnects=self._listener.reconnects + shards.regains,
            dropped=self._dropped_total,
            connected=self.connected,
            sharded_channels=len(shards.entries),
            shard_connections=shards.connections,
        )

    async def aclose(self) -> None:
        """Stop the hub: tasks cancelled and awaited, connections closed. Idempotent.

        Subscriptions end: after their buffered messages, iteration raises
        ``SubscriptionClosed(reason="closed")``; pending ``subscribe()`` calls raise
        ``RedisUnavailable(reason="closed")``.
        """
        if self._closed:
            return
        self._closed = True
        if self._switch is not None:
            await self._switch.aclose()
        await self._listener.aclose()
        await self._shards.aclose()
        for sub in list(self._subs):
            sub._finish(_End.HUB_CLOSED)
        self._subs.clear()
        self._wire.close()
        self._client.monitor.release_down("pubsub")

    def __repr__(self) -> str:
        live = self._listener.live
        state = "closed" if self._closed else ("connected" if live else "disconnected")
        return f"<PubSubHub {state} subscriptions={len(self._subs)}>"

    def _check_usable(self) -> None:
        state = self._client.state
        if self._closed or state is ClientState.CLOSED:
            raise RedisUnavailable("pubsub: the client is closed", reason="closed")
        if state is not ClientState.CONNECTED:
            raise RedisUnavailable("pubsub: the client is not connected", reason="not_connected")
        listener = self._listener
        if self._failed:
            raise RedisUnavailable("pubsub: the listener failed", reason="down")
        if not listener.live and (
            listener.failing or (not listener.started and not self._client.available)
        ):
            raise RedisUnavailable(
                f"pubsub: Redis is unavailable ({self._client.health_reason})", reason="down"
            )

    async def _open(
        self,
        channels: list[str],
        patterns: list[str],
        size: int,
        on_message: MessageCallback | None = None,
    ) -> Subscription:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"buffer_size must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {size}")
        self._check_usable()
        self.start()
        sub = Subscription(self, size, on_message)
        entries: list[_wire.Entry[Subscription]] = []
        sharded: list[_shards.ShardEntry[Subscription]] = []
        entry: _wire.Entry[Subscription]
        for name in channels:
            if self._sharded.match(name):
                shard_entry = self._shards.acquire(name, sub)
                sharded.append(shard_entry)
                entry = shard_entry
            else:
                entry = self._wire.channels.acquire(name, sub)
            entries.append(entry)
            sub._channels[entry.wire] = name
        for name in patterns:
            entries.append(entry := self._wire.patterns.acquire(name, sub))
            sub._patterns[entry.wire] = name
        self._subs.add(sub)
        self._listener.kick()
        if any(self._shards.failing(entry) for entry in sharded):
            await sub.close()
            raise RedisUnavailable(
                "pubsub: the node serving a sharded channel is unreachable", reason="down"
            )
        try:
            async with deadline(self._subscribe_timeout):
                for entry in entries:
                    await entry.confirmed.wait()
        except asyncio.TimeoutError as exc:
            await sub.close()
            raise RedisUnavailable(
                f"subscribe: Redis did not confirm within {self._subscribe_timeout}s",
                reason="timeout",
            ) from exc
        except BaseException:
            await sub.close()
            raise
        if self._closed or self._failed:
            reason = "closed" if self._closed else "down"
            raise RedisUnavailable("pubsub: the hub stopped while subscribing", reason=reason)
        refused = next((entry for entry in sharded if entry.error is not None), None)
        if refused is not None:
            await sub.close()
            raise RedisUnavailable(
                f"subscribe: Redis refused sharded channel {refused.name!r}: {refused.error}",
                reason="misconfigured",
            )
        sub._active = True
        return sub

    def _release(self, sub: Subscription) -> None:
        if sub._released:
            return
        sub._released = True
        for key, name in sub._channels.items():
            if self._sharded.match(name):
                self._shards.release(key, sub)
            else:
                self._wire.channels.release(key, sub)
        for key in sub._patterns:
            self._wire.patterns.release(key, sub)
        self._subs.discard(sub)
        self._listener.kick()

    # -- called by the listener ---------------------------------------------------------

    def _on_lost(self) -> None:
        for sub in self._subs:
            if sub._active:
                sub._mark_gap()
        _notify(self._on_disconnected)

    def _count_drop(self) -> None:
        self._dropped_total += 1
        self._metrics.dropped.add(1)

    def _on_reconnect(self) -> None:
        self._metrics.reconnects.add(1)
        _notify(self._on_reconnected)

    def _on_switch(self) -> None:
        self._listener.wake()
        for listener in self._shards.listeners.values():
            listener.wake()
        self._client.monitor.check_now()

    def _on_shard_lost(self, entries: list[_shards.ShardEntry[Subscription]]) -> None:
        for entry in entries:
            for sub in entry.subs:
                if sub._active:
                    sub._mark_gap()
        _notify(self._on_disconnected)

    def _on_refused(self, entry: _shards.ShardEntry[Subscription]) -> None:
        # Subscribers still waiting in subscribe() raise; established ones end.
        for sub in list(entry.subs):
            if sub._active:
                sub._finish(_End.FAILED)
                self._release(sub)

    def _on_failed(self) -> None:
        self._failed = True
        for sub in list(self._subs):
            sub._finish(_End.FAILED)
        self._wire.close()
        self._shards.close()


def _add_listener(
    listeners: list[ReconnectListener], listener: ReconnectListener
) -> Callable[[], None]:
    listeners.append(listener)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(listener)

    return remove


def _notify(listeners: list[ReconnectListener]) -> None:
    for listener in list(listeners):
        try:
            listener()
        except Exception:  # a listener can never break the hub
            _log.exception(
                "pubsub connection listener failed",
                extra=log_fields("pubsub", "pubsub_listener_callback_failed"),
            )


def _fan_out(subs: set[Subscription], channel: str, pattern: str | None, raw: bytes) -> None:
    # Decoded once, shared by every subscriber.
    payload, data, context = _wire.decode_payload(raw)
    message = Message(channel, payload, data, pattern, context)
    for sub in subs:
        sub._push(message)
