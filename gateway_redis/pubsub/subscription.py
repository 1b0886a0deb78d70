"""What a subscriber holds: :class:`Subscription`, the :class:`Message` it yields, and the
hub's :class:`PubSubStats`.

A subscription is created by :class:`~gateway_redis.pubsub.PubSubHub`; the methods under
"the hub's side" are how the hub feeds and ends it (the hub never touches its state
directly). Applications use the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final

from gateway_redis.errors import SubscriptionClosed
from gateway_redis.pubsub import envelope
from gateway_redis.support import log_fields

__all__ = ["End", "Message", "MessageCallback", "PubSubStats", "Subscription", "fan_out"]

_log = logging.getLogger(__name__)
_WARN_EVERY: Final = 10.0  # seconds between overflow warnings of one subscription

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
    True when messages may have been lost just before this one: after a lost connection,
    on the first message that arrived once it was subscribed again (messages buffered
    before the loss keep False); after a buffer overflow, on the oldest message kept.
    ``offset`` and ``epoch`` are the message's place in its channel's history (messages
    published through :class:`~gateway_redis.pubsub.history.ChannelHistory`), else None.
    The format is :mod:`gateway_redis.pubsub.envelope`.
    """

    channel: str
    payload: str
    data: Any
    pattern: str | None = None
    trace_context: Mapping[str, str] | None = None
    gap_before: bool = False
    offset: int | None = None
    epoch: str | None = None


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


class End(enum.Enum):
    """Why a subscription ended (see :meth:`Subscription.end`)."""

    CLOSED = "closed"  # by its owner: buffer discarded, iteration stops
    UNSUBSCRIBED = "unsubscribed"  # no channel left: buffered messages, then stop
    HUB_CLOSED = "hub_closed"  # buffered messages, then SubscriptionClosed(reason="closed")
    FAILED = "failed"  # buffered messages, then SubscriptionClosed(reason="failed")


class Subscription:
    """Messages from some channels or patterns, in a bounded buffer. Get one from
    :meth:`PubSubHub.subscribe` or :meth:`PubSubHub.psubscribe`.

    Iterate with ``async for``; use ``async with`` or :meth:`close` so the hub can
    unsubscribe. When the buffer (``buffer_size`` messages) is full the oldest message is
    dropped, ``dropped`` grows and the next message has ``gap_before=True``. When a
    connection serving it is lost, the first message to arrive after the loss has
    ``gap_before=True``, however many older messages wait in the buffer. Iteration
    stops after :meth:`close` or when :meth:`PubSubHub.unsubscribe` took its last channel;
    it raises :class:`SubscriptionClosed` (``reason="closed"`` when the hub closed,
    ``"failed"`` when it broke) after the buffered messages are consumed.

    A *callback subscription* (``subscribe(..., on_message=f)``) has no buffer and cannot
    be iterated: the hub's reader calls ``f(message)`` for each message as it arrives
    (``gap_before`` set as above). ``f`` must return quickly, never block, and must not
    subscribe or unsubscribe synchronously; its exceptions are logged and swallowed.
    Check :attr:`closed` to learn that the hub ended it.

    Built by the hub: ``channels`` and ``patterns`` map each name as sent to Redis to the
    caller's name; ``release(subscription)`` gives its channels back to the hub (called
    once, by :meth:`close`); ``on_drop()`` counts one dropped message.
    """

    def __init__(
        self,
        buffer_size: int,
        on_message: MessageCallback | None,
        *,
        channels: dict[bytes, str],
        patterns: dict[bytes, str],
        release: Callable[[Subscription], None],
        on_drop: Callable[[], None],
    ) -> None:
        self._callback = on_message
        self._size = buffer_size
        self._release = release
        self._on_drop = on_drop
        self._buffer: deque[Message] = deque()
        self._event = asyncio.Event()
        self._channels = channels
        self._patterns = patterns
        self._end: End | None = None
        self._active = False  # subscribe() returned: a later reconnect is a gap for it
        self._gap = False  # overflow: the oldest buffered message follows a gap
        self._gap_next = False  # lost connection: the next message to arrive follows a gap
        self._flagged = 0  # buffered messages carrying gap_before
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

        For consumers that want to resync at once rather than on the message after the gap
        (which then has ``gap_before=False``, as has every message buffered now).
        """
        gap = self._gap or self._gap_next or self._flagged > 0
        self._gap = self._gap_next = False
        if self._flagged:  # rare: a consumer resyncing after a reconnect
            self._flagged = 0
            self._buffer = deque(
                dataclasses.replace(m, gap_before=False) if m.gap_before else m
                for m in self._buffer
            )
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
        self.end(End.CLOSED)
        self._release(self)

    def __aiter__(self) -> Subscription:
        if self._callback is not None:
            raise TypeError("a callback subscription cannot be iterated")
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._buffer:
                return self._take()
            end = self._end
            if end is End.CLOSED or end is End.UNSUBSCRIBED:
                raise StopAsyncIteration
            if end is End.HUB_CLOSED:
                raise SubscriptionClosed("the pub/sub hub was closed", reason="closed")
            if end is End.FAILED:
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

    # -- the hub's side -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True once :meth:`activate` ran (``subscribe()`` returned it)."""
        return self._active

    @property
    def held(self) -> tuple[Mapping[bytes, str], Mapping[bytes, str]]:
        """Its channels and patterns, each as sent to Redis -> as the caller named it."""
        return self._channels, self._patterns

    def activate(self) -> None:
        """Redis confirmed every name: from now on a lost connection is a gap for it."""
        self._active = True

    def connection_lost(self) -> None:
        """A connection serving it was lost: if active, the next message to arrive (not the
        next one taken from the buffer, which came before the loss) has a gap."""
        if self._active and not self._gap_next:
            self._gap_next = True
            self._gaps += 1

    def end(self, how: End) -> None:
        """End it (idempotent; :attr:`End.CLOSED` wins over an earlier end and discards
        the buffer). Does not give its channels back: see :meth:`close`."""
        if self._end is None or how is End.CLOSED:
            self._end = how
        if how is End.CLOSED:
            self._buffer.clear()
        self._event.set()

    def remove_channel(self, key: bytes) -> bool:
        """The hub unsubscribed channel ``key`` (its name as sent) for everyone. True when
        nothing is left: it then ends, after its buffered messages."""
        self._channels.pop(key, None)
        if self._channels or self._patterns:
            return False
        self.end(End.UNSUBSCRIBED)
        return True

    def deliver(self, message: Message) -> None:
        """Buffer ``message`` (dropping the oldest when full) or run the callback with it."""
        if self._gap_next:
            self._gap_next = False
            message = dataclasses.replace(message, gap_before=True)
        callback = self._callback
        if callback is not None:
            try:
                callback(message)
            except Exception:  # a subscriber can never break the reader
                _log.exception(
                    "pubsub message callback failed on %s",
                    self._describe(),
                    extra=log_fields("pubsub", "pubsub_callback_failed"),
                )
            return
        if message.gap_before:
            self._flagged += 1
        if len(self._buffer) >= self._size:
            if self._buffer.popleft().gap_before:
                self._flagged -= 1  # its gap merges into the overflow's
            self._dropped += 1
            self._unreported += 1
            self._on_drop()
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
                    extra=log_fields("pubsub", "pubsub_overflow", dropped=self._dropped),
                )
                self._warned_at, self._unreported = now, 0
        self._buffer.append(message)
        self._event.set()

    # -- internals ------------------------------------------------------------------------

    def _take(self) -> Message:
        message = self._buffer.popleft()
        if message.gap_before:
            self._flagged -= 1
        elif self._gap:
            message = dataclasses.replace(message, gap_before=True)
        self._gap = False
        return message

    def _mark_gap(self) -> None:
        if not self._gap:
            self._gap = True
            self._gaps += 1

    def _describe(self) -> str:
        names = [*self._channels.values(), *self._patterns.values()]
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        return ", ".join(repr(n) for n in names[:3]) + more


def fan_out(subs: set[Subscription], channel: str, pattern: str | None, raw: bytes) -> None:
    """Hand a message that came from Redis to ``subs``: decoded once, shared by all."""
    payload, data, context, position = envelope.decode_message(raw)
    if position is None:
        message = Message(channel, payload, data, pattern, context)
    else:
        epoch, offset = position
        message = Message(channel, payload, data, pattern, context, offset=offset, epoch=epoch)
    for sub in subs:
        sub.deliver(message)
