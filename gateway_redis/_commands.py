"""The command API of :class:`~gateway_redis.RedisClient`: confirmed writes, the cache
commands and the pub/sub and session shortcuts, each one call through the client's
``execute`` (one deadline, fast failure, errors translated) or its hub and session store.

:class:`Commands` is mixed into the client; it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from gateway_redis._confirm import confirmed_write
from gateway_redis.errors import CacheKeyNotFound
from gateway_redis.support import check_seconds, ttl_milliseconds

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.config import RedisConfig
    from gateway_redis.pubsub import PubSubHub, Subscription
    from gateway_redis.sessions import Session, SessionStore

__all__ = ["Commands", "WindowHits"]

T = TypeVar("T")

# One round trip, atomic: add the weight (a give-back never goes below 0 nor creates the
# key), start the window on the first hit (and on a key left without expiry), and return
# [count, milliseconds left in the window].
_HIT = """
local left = redis.call('PTTL', KEYS[1])
local weight = tonumber(ARGV[2])
if weight < 0 then
  if left == -2 then return {0, 0} end
  local current = tonumber(redis.call('GET', KEYS[1]))
  weight = -math.min(-weight, current)
end
local count = redis.call('INCRBY', KEYS[1], weight)
if left < 0 then
  left = tonumber(ARGV[1])
  redis.call('PEXPIRE', KEYS[1], left)
end
return {count, left}
"""


@dataclass(frozen=True, slots=True)
class WindowHits:
    """What :meth:`Commands.hit` counted: ``count`` hits in the current window, which ends
    in ``reset_after`` seconds."""

    count: int
    reset_after: float


def _encode_value(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"value must be bytes or str, got {type(value).__name__}")


class Commands:
    """:meth:`confirmed` (the one path of writes that protect security), the cache API
    (``get``, ``set``, ``delete``, ``exists``, ``set_nx``, ``increment``,
    ``expire``, ``ping``) and shortcuts to the client's pub/sub hub and session store.

    Keys are given without the prefix (the client adds it). Every command raises
    :class:`~gateway_redis.RedisUnavailable` when Redis cannot be reached (``get``:
    :class:`~gateway_redis.CacheUnavailable`, which is also a miss).
    """

    if TYPE_CHECKING:  # provided by RedisClient

        def key(self, name: str) -> str: ...

        async def execute(
            self,
            operation: str,
            call: Callable[[Redis], Awaitable[T]],
            *,
            retry: bool = True,
            miss: bool = False,
        ) -> T: ...

        @property
        def config(self) -> RedisConfig: ...

        @property
        def pubsub(self) -> PubSubHub: ...

        @property
        def sessions(self) -> SessionStore: ...

    async def confirmed(
        self,
        operation: str,
        key: str,
        call: Callable[[Redis], Awaitable[T]],
        *,
        retry: bool = True,
    ) -> T:
        """Run a write that protects security (logout, revocation, permission removal) and
        confirm it: :meth:`execute`'s rules, on pinned connections.

        ``call(r)`` gets a ``Redis`` bound to one connection to the primary (on Cluster:
        the primary that owns ``key``, a full key as :meth:`key` returns; a command for a
        key of another node is redirected and that node's connection is pinned and
        confirmed too, but ``MULTI`` and scripts must stay in one slot); its commands,
        pipelines and ``MULTI`` run there. Then ``ROLE`` on each pinned connection says
        whether the primary has replicas online now, and if it has, ``WAIT 1`` on that
        same connection must see one acknowledge within half the
        operation deadline or of the read timeout, whichever is shorter (a longer ``WAIT``
        would outlast the socket), since a failover could otherwise silently undo the
        write (replication is asynchronous). Raises ``RedisUnavailable(reason="unconfirmed")``
        when none did (the write may still have been applied on the primary), and what
        :meth:`execute` raises.
        """
        config = self.config
        wait_ms = max(1, int(min(config.operation_timeout, config.read_timeout) * 500))
        return await self.execute(
            operation, lambda r: confirmed_write(r, key, call, wait_ms), retry=retry
        )

    # -- cache API ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """The value stored at ``key``.

        Raises :class:`CacheKeyNotFound` on a miss and :class:`CacheUnavailable` (both a
        miss and a :class:`RedisUnavailable`) when Redis cannot be reached.
        """
        full = self.key(key)
        value: Any = await self.execute("get", lambda r: r.get(full), miss=True)
        if value is None:
            raise CacheKeyNotFound(key)
        return value if type(value) is bytes else bytes(value)

    async def set(self, key: str, value: bytes | str, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` at ``key``, expiring after ``ttl`` (seconds or timedelta).

        ``ttl=None`` stores without expiry. Raises :class:`RedisUnavailable`.
        """
        full, data = self.key(key), _encode_value(value)
        px = None if ttl is None else ttl_milliseconds(ttl)
        await self.execute("set", lambda r: r.set(full, data, px=px))

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error if it does not exist. Raises :class:`RedisUnavailable`."""
        full = self.key(key)
        await self.execute("delete", lambda r: r.delete(full))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists. Raises :class:`RedisUnavailable`."""
        full = self.key(key)
        count: int = await self.execute("exists", lambda r: r.exists(full))
        return count > 0

    async def set_nx(self, key: str, value: bytes | str, ttl: float | timedelta) -> bool:
        """Store ``value`` only if ``key`` does not exist; True if it was stored.

        The TTL is required: a lock or marker without expiry outlives its owner.
        Raises :class:`RedisUnavailable`.
        """
        full, data, px = self.key(key), _encode_value(value), ttl_milliseconds(ttl)
        stored: Any = await self.execute("set_nx", lambda r: r.set(full, data, px=px, nx=True))
        return bool(stored)

    async def increment(self, key: str) -> int:
        """Add 1 to the integer at ``key`` (created as 0) and return the new value.

        Sent at most once: a lost reply is reported as :class:`RedisUnavailable`, never
        retried into a double increment.
        """
        full = self.key(key)
        value: Any = await self.execute("increment", lambda r: r.incr(full), retry=False)
        return int(value)

    async def hit(self, key: str, window: float | timedelta, *, weight: int = 1) -> WindowHits:
        """Count ``weight`` hits at ``key`` in a fixed window of ``window`` (seconds or
        timedelta) that starts with the key's first hit; returns the window's count and
        the time left in it. The building block of rate limits and login throttles.

        One atomic round trip (a Lua script: the count and its expiry are set together, so
        concurrent callers each see a distinct count and a crash cannot leave a counter
        that never expires); count first, then decide, then do the work. A negative
        ``weight`` gives hits back (never below 0, never starting a window). Sent at most
        once (a lost reply is :class:`RedisUnavailable`, never a double count). Raises
        ``ValueError`` for a bad ``weight``, :class:`RedisUnavailable` and
        :class:`~gateway_redis.CommandError` (the key holds something else).
        """
        if isinstance(weight, bool) or not isinstance(weight, int) or weight == 0:
            raise ValueError(f"weight must be a non-zero int, got {weight!r}")
        full, px = self.key(key), max(1, round(check_seconds("window", window) * 1000))
        reply: Any = await self.execute(
            "hit", lambda r: r.eval(_HIT, 1, full, px, weight), retry=False
        )
        return WindowHits(int(reply[0]), max(0, int(reply[1])) / 1000)

    async def expire(self, key: str, ttl: float | timedelta) -> bool:
        """Set a TTL on an existing key; False if the key does not exist."""
        full, px = self.key(key), ttl_milliseconds(ttl)
        done: bool = await self.execute("expire", lambda r: r.pexpire(full, px))
        return bool(done)

    async def ping(self) -> None:
        """Round-trip to Redis through the pool. Raises :class:`RedisUnavailable`."""
        await self.execute("ping", lambda r: r.ping())

    # -- pub/sub shortcuts (gateway_redis.pubsub) ---------------------------------------

    async def publish(self, channel: str, message: Any) -> int:
        """Publish ``message`` as JSON on ``channel``; returns the number of receivers.

        See :meth:`gateway_redis.pubsub.PubSubHub.publish`.
        """
        return await self.pubsub.publish(channel, message)

    async def subscribe(self, *channels: str, buffer_size: int = 100) -> Subscription:
        """Subscribe to ``channels``; see :meth:`gateway_redis.pubsub.PubSubHub.subscribe`."""
        return await self.pubsub.subscribe(*channels, buffer_size=buffer_size)

    async def psubscribe(self, *patterns: str, buffer_size: int = 100) -> Subscription:
        """Subscribe to glob ``patterns``; never pass user input here."""
        return await self.pubsub.psubscribe(*patterns, buffer_size=buffer_size)

    async def unsubscribe(self, *channels: str) -> None:
        """End every subscription of this process to ``channels``, whoever made it; see
        :meth:`gateway_redis.pubsub.PubSubHub.unsubscribe`."""
        await self.pubsub.unsubscribe(*channels)

    # -- session shortcuts (gateway_redis.sessions) -------------------------------------

    async def create_session(
        self,
        user_id: str,
        metadata: dict[str, Any] | None = None,
        ttl: float | timedelta | None = None,
    ) -> str:
        """Create a session for ``user_id``; returns its new ID (see :mod:`.sessions`)."""
        return await self.sessions.create(user_id, metadata, ttl=ttl)

    async def get_session(self, session_id: str) -> Session:
        """The session; raises :class:`SessionNotFound`."""
        return await self.sessions.get(session_id)

    async def update_session(self, session_id: str, metadata: dict[str, Any]) -> Session:
        """Merge ``metadata`` into the session; raises :class:`SessionNotFound`."""
        return await self.sessions.update(session_id, metadata)

    async def delete_session(self, session_id: str) -> None:
        """Delete the session; no error if it is already gone."""
        await self.sessions.delete(session_id)

    async def get_user_sessions(self, user_id: str) -> list[Session]:
        """Every live session of ``user_id``, known by its ID's ``digest`` (``id`` is "")."""
        return await self.sessions.get_user_sessions(user_id)

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of ``user_id`` (log out everywhere); returns how many."""
        return await self.sessions.delete_user_sessions(user_id)
